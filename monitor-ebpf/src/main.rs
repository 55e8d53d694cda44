//! Kernel side of egress-monitor: four cgroup sock_addr hooks that judge
//! every outbound connect and unconnected send against the policy of the
//! caller's cgroup, from maps only.
//!
//! Everything that can change at run time lives in two slots of maps. The
//! daemon fills the idle slot and then flips one word in `CONFIG`, so a
//! decision always reads one whole policy set (see `Config`, and
//! `in_force`, which reads that word with one load).
#![no_std]
#![no_main]
// Atomic adds: the BPF target has no atomic types with fetch_add, but its
// instruction set has the add (`lock *(u64 *)(r1 + 0) += r2`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod dns;
mod process;

use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_sock, BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_uid,
            bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_sk_fullsock, bpf_sk_storage_get,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{btf_map, cgroup_skb, cgroup_sock_addr, lsm, map, raw_tracepoint, socket_filter},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::{LsmContext, RawTracePointContext, SkBuffContext, SockAddrContext},
};
use monitor_common::{
    flow_stat, geo_table, harvest, kind, limits, lost, tail, Action, CidrRule, CloudEntry,
    CloudKey, Config, CountrySource, Decision, DecisionEvent, DomainKey, EventHeader, FlowEntry,
    FlowKey, Hook, Hot, InForce, Memo, Meta, Mode, NameEntry, PolicyAddr, Quiet, Region, RegionKey,
    RegionRule, Rule, Selection, SockState, SweepSocket, Verdict, AF_INET, AF_INET6, AF_PACKET,
    DECISION_VERSION, DOMAIN_EXACT, DOMAIN_WILDCARD, IPPROTO_TCP, IPPROTO_UDP,
};

/// Return values of a cgroup sock_addr program.
const PASS: i32 = 1;
const REJECT: i32 = 0;
/// `bpf_sock::state` of a TCP socket whose connect sent its SYN and has
/// no answer yet (the kernel's `TCP_SYN_SENT`).
const TCP_SYN_SENT: u32 = 2;
/// `bpf_sock::state` of a connected socket: a TCP connection, a UDP
/// socket with a peer (the kernel's `TCP_ESTABLISHED`).
const TCP_ESTABLISHED: u32 = 1;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(limits::DEFAULT_RING_BYTES, 0);
/// Per CPU: at `lost::RING_FULL` the events that found the ring buffer
/// full; at `lost::SEQ` the last sequence number given to an event this
/// CPU put in the ring (so the daemon can tell what it read from what it
/// kept, across its own restarts).
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The last decision per socket (see `SockState`), freed with the socket.
#[btf_map]
static SOCKS: aya_ebpf::btf_maps::SkStorage<SockState> = aya_ebpf::btf_maps::SkStorage::new();

/// The decision cache and flow counters (see `FlowEntry`). A plain hash,
/// not an LRU: an entry leaves only when the daemon has harvested it.
#[map]
static FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(limits::FLOW_ENTRIES, 0);

/// Refusals FLOWS had no room for (see `file`), entries like FLOWS' and
/// harvested alike. Allowed flows never enter it: a flood of new allowed
/// destinations that fills FLOWS leaves a refusal its cache entry and
/// count, instead of an event per repeat competing for the ring.
#[map]
static REFUSALS: HashMap<FlowKey, FlowEntry> =
    HashMap::with_max_entries(limits::REFUSAL_ENTRIES, 0);

/// The keys of flow entries that changed, once per harvest generation
/// (see `monitor_common::harvest` and `touched`).
#[map]
static TOUCHED: RingBuf = RingBuf::with_byte_size(limits::TOUCHED_BYTES, 0);

/// The harvest's generation and the keys `TOUCHED` had no room for.
#[map]
static HARVEST: Array<u64> = Array::with_max_entries(harvest::COUNT, 0);

/// The selection of each cgroup under one CONFIG word (see `Memo`).
#[map]
static MEMO: LruHashMap<u64, Memo> = LruHashMap::with_max_entries(limits::MEMO_ENTRIES, 0);

/// Per CPU: the cgroups no policy selects under a CONFIG word (see
/// `Quiet`), what every program asks first. Filled from `memo_of` only,
/// so it says no more than MEMO does: within one word a cgroup's
/// selection only changes from unclassified to classified (the daemon
/// adds it to KNOWN), and an unclassified cgroup is never "not selected"
/// (it is its own selection).
#[map]
static QUIET: PerCpuArray<Quiet> = PerCpuArray::with_max_entries(limits::QUIET_SLOTS, 0);

/// Per CPU, in QUIET's slot: what a repeat needs of a selected cgroup's
/// memo (see `Hot`), filed from MEMO by `memo_of`.
#[map]
static HOT: PerCpuArray<Hot> = PerCpuArray::with_max_entries(limits::QUIET_SLOTS, 0);

/// Bumped after any memo changes (made, or its names epoch moved): every
/// HOT slot filed before is stale.
#[map]
static MEMO_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU room where a new flow entry is built before it is filed.
#[map]
static FLOW_SCRATCH: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(1, 0);

/// The programs `egress` tail-calls for what its cache does not answer:
/// `egress_decide` at `tail::DECIDE`, `sender_decide` at `tail::SENDER`
/// (see there).
#[map]
static EGRESS_DECIDE: ProgramArray = ProgramArray::with_max_entries(tail::COUNT, 0);

/// See `flow_stat`.
#[map]
static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(flow_stat::COUNT, 0);

/// The socket the daemon's sweep asks `judge_socket` about.
#[map]
static SWEEP: Array<SweepSocket> = Array::with_max_entries(1, 0);

/// Read and written by the daemon only (see `Meta`).
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);

/// CLOCK_BOOTTIME minus CLOCK_MONOTONIC in nanoseconds (the time the host
/// slept), as the daemon last read it: what turns the coarse monotonic
/// clock into the boot time every time in the maps is kept in (`seen_ns`).
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// The country table (`monitor_common::geo_table`), two slots; the daemon
/// fills the idle one through an mmap and sizes both at load.
#[map]
static GEO_A: Array<geo_table::Element> = Array::with_max_entries(
    limits::GEO_TABLE_WORDS / geo_table::WORDS_PER_ELEMENT,
    BPF_F_MMAPABLE,
);
#[map]
static GEO_B: Array<geo_table::Element> = Array::with_max_entries(
    limits::GEO_TABLE_WORDS / geo_table::WORDS_PER_ELEMENT,
    BPF_F_MMAPABLE,
);

/// The cgroups the daemon has classified: every cgroup under the attach
/// root it found that is not selected (see `Selection::UNCLASSIFIED`). Shared by
/// both slots: an entry only says that the cgroup existed at a walk whose
/// selection is in force.
#[map]
static KNOWN: HashMap<u64, u8> = HashMap::with_max_entries(limits::KNOWN_ENTRIES, 0);

/// Per slot: the watched parents of the set (see `Selection::UNCLASSIFIED`),
/// 1 where only monitor-mode policies watch, 2 where an enforcing one does.
#[map]
static WATCH_A: HashMap<u64, u8> = HashMap::with_max_entries(limits::SELECT_ENTRIES, 0);
#[map]
static WATCH_B: HashMap<u64, u8> = HashMap::with_max_entries(limits::SELECT_ENTRIES, 0);

#[map]
static SELECT_A: HashMap<u64, Selection> = HashMap::with_max_entries(limits::SELECT_ENTRIES, 0);
#[map]
static SELECT_B: HashMap<u64, Selection> = HashMap::with_max_entries(limits::SELECT_ENTRIES, 0);

#[map]
static REGION_RULES_A: HashMap<RegionKey, RegionRule> =
    HashMap::with_max_entries(limits::REGION_RULE_ENTRIES, 0);
#[map]
static REGION_RULES_B: HashMap<RegionKey, RegionRule> =
    HashMap::with_max_entries(limits::REGION_RULE_ENTRIES, 0);

#[map]
static ALLOW_CIDRS_A: LpmTrie<PolicyAddr, CidrRule> =
    LpmTrie::with_max_entries(limits::CIDR_ENTRIES, 0);
#[map]
static ALLOW_CIDRS_B: LpmTrie<PolicyAddr, CidrRule> =
    LpmTrie::with_max_entries(limits::CIDR_ENTRIES, 0);
#[map]
static DENY_CIDRS_A: LpmTrie<PolicyAddr, CidrRule> =
    LpmTrie::with_max_entries(limits::CIDR_ENTRIES, 0);
#[map]
static DENY_CIDRS_B: LpmTrie<PolicyAddr, CidrRule> =
    LpmTrie::with_max_entries(limits::CIDR_ENTRIES, 0);

#[map]
static DOMAINS_A: HashMap<DomainKey, RegionRule> =
    HashMap::with_max_entries(limits::DOMAIN_ENTRIES, 0);
#[map]
static DOMAINS_B: HashMap<DomainKey, RegionRule> =
    HashMap::with_max_entries(limits::DOMAIN_ENTRIES, 0);
#[map]
static CLOUD_RULES_A: HashMap<CloudKey, RegionRule> =
    HashMap::with_max_entries(limits::CLOUD_RULE_ENTRIES, 0);
#[map]
static CLOUD_RULES_B: HashMap<CloudKey, RegionRule> =
    HashMap::with_max_entries(limits::CLOUD_RULE_ENTRIES, 0);

/// The providers' published prefixes with their regions, switched on their
/// own bit of the CONFIG word (a new snapshot does not touch the policies).
#[map]
static CLOUD_A: LpmTrie<[u8; 16], CloudEntry> = LpmTrie::with_max_entries(limits::CLOUD_ENTRIES, 0);
#[map]
static CLOUD_B: LpmTrie<[u8; 16], CloudEntry> = LpmTrie::with_max_entries(limits::CLOUD_ENTRIES, 0);

/// One policy set: the maps of one slot (B where true). Each map is a
/// choice between two map addresses, made where it is used: a table of
/// map pointers in read-only data would hold zeros for the verifier (the
/// loader relocates map references in code, not in data), and the
/// compiler turns a reference to a static struct of them into such loads
/// whenever it keeps the struct's address in a register.
#[derive(Clone, Copy)]
struct Slot(bool);

/// `Slot::NAME()`: map A or map B of the slot.
macro_rules! slot_maps {
    ($($name:ident: $ty:ty = $a:ident | $b:ident;)*) => {
        impl Slot {
            $(
                #[inline(always)]
                fn $name(self) -> &'static $ty {
                    if self.0 { &$b } else { &$a }
                }
            )*
        }
    };
}

slot_maps! {
    select: HashMap<u64, Selection> = SELECT_A | SELECT_B;
    watch: HashMap<u64, u8> = WATCH_A | WATCH_B;
    region_rules: HashMap<RegionKey, RegionRule> = REGION_RULES_A | REGION_RULES_B;
    allow: LpmTrie<PolicyAddr, CidrRule> = ALLOW_CIDRS_A | ALLOW_CIDRS_B;
    deny: LpmTrie<PolicyAddr, CidrRule> = DENY_CIDRS_A | DENY_CIDRS_B;
    domains: HashMap<DomainKey, RegionRule> = DOMAINS_A | DOMAINS_B;
    cloud_rules: HashMap<CloudKey, RegionRule> = CLOUD_RULES_A | CLOUD_RULES_B;
}

/// What the hook saw.
struct Attempt {
    hook: Hook,
    family: u8,
    protocol: u8,
    /// Network order; IPv4 as `::ffff:a.b.c.d`.
    addr: [u8; 16],
    /// Host order.
    port: u16,
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, Hook::Sendmsg6)
}

/// An IPv4 address in the form every map holds it: `::ffff:a.b.c.d`.
#[inline(always)]
pub(crate) fn mapped_v4(ip4: [u8; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = ip4[0];
    addr[13] = ip4[1];
    addr[14] = ip4[2];
    addr[15] = ip4[3];
    addr
}

/// Whether `addr` is an IPv4 address in its mapped form.
#[inline(always)]
pub(crate) fn is_mapped_v4(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let ip4 = sa.user_ip4.to_ne_bytes();
    // A sendmsg without a destination (connected UDP with ancillary data)
    // reaches this hook with an unspecified address: the connected peer was
    // judged by the connect hook, so there is nothing new to decide.
    if hook == Hook::Sendmsg4 && ip4 == [0; 4] {
        return PASS;
    }
    let addr = mapped_v4(ip4);
    let attempt = Attempt {
        hook,
        family: AF_INET,
        protocol: sa.protocol as u8,
        addr,
        port: u16::from_be(sa.user_port as u16),
    };
    judge(ctx, &attempt)
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    if hook == Hook::Sendmsg6 && addr == [0; 16] {
        return PASS;
    }
    // An IPv4-mapped destination (::ffff:a.b.c.d) needs no special case: the
    // tries hold IPv4 in exactly that form, so it is judged as the IPv4
    // address it is.
    let attempt = Attempt {
        hook,
        family: AF_INET6,
        protocol: sa.protocol as u8,
        addr,
        port: u16::from_be(sa.user_port as u16),
    };
    judge(ctx, &attempt)
}

/// Whose cgroup decides: the calling task's (sock_addr and sock_create
/// hooks, which run in the caller's context), or the socket's (egress
/// packets, which may leave from a timer or another task).
#[derive(Clone, Copy)]
pub(crate) enum Owner {
    Task,
    Skb(*mut __sk_buff),
}

impl Owner {
    #[inline(always)]
    fn cgroup(self) -> u64 {
        match self {
            // SAFETY: plain helper calls; the skb pointer is the context.
            Owner::Task => unsafe { bpf_get_current_cgroup_id() },
            Owner::Skb(skb) => unsafe { bpf_skb_cgroup_id(skb) },
        }
    }

    #[inline(always)]
    fn ancestor(self, level: i32) -> u64 {
        match self {
            // SAFETY: as above.
            Owner::Task => unsafe { bpf_get_current_ancestor_cgroup_id(level) },
            Owner::Skb(skb) => unsafe { bpf_skb_ancestor_cgroup_id(skb, level) },
        }
    }
}

/// The policy set in force: its slot, the decoded word, and the raw word
/// (every cache entry is valid only under the word it was made under), all
/// from one copy of the CONFIG word.
#[inline(always)]
fn in_force() -> Option<(Slot, InForce, u64)> {
    let config = CONFIG.get_ptr(0)?;
    // Exactly one load of the whole word (see `Config` for why a switch is
    // atomic); every field below comes from this copy.
    // SAFETY: the pointer is the array's value, valid and 8-byte aligned.
    let word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*config).word)) };
    let set = Config { word }.unpack();
    let slot = Slot(set.policy_slot != 0);
    Some((slot, set, word))
}

/// Whether the owner's cgroup is outside every selected subtree under the
/// word in force, as this CPU's QUIET says: a helper call for the cgroup,
/// one array read and a compare, before anything else a program does. A
/// miss only means "ask the memo" (the program goes on as it would). The
/// set is read again where a decision starts: kept apart, each program's
/// long path stays what the verifier walks today.
#[inline(always)]
fn quiet_now(owner: Owner) -> bool {
    match in_force() {
        Some((_, _, word)) => quiet(owner.cgroup(), word),
        None => false,
    }
}

/// Whether this CPU's QUIET says `cgroup` is selected by no policy under
/// `word`.
#[inline(always)]
fn quiet(cgroup: u64, word: u64) -> bool {
    let mix = monitor_common::quiet_mix(cgroup);
    let Some(q) = QUIET.get_ptr(mix as u32 & (limits::QUIET_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: this CPU's slot; read field by field, and a torn pair fails
    // the tag (see `Quiet`).
    unsafe {
        core::ptr::read_volatile(core::ptr::addr_of!((*q).cgroup_id)) == cgroup
            && core::ptr::read_volatile(core::ptr::addr_of!((*q).tag)) == mix ^ word
    }
}

/// Files `cgroup` in this CPU's QUIET as selected by no policy under `word`.
#[inline(always)]
fn note_quiet(cgroup: u64, word: u64) {
    let mix = monitor_common::quiet_mix(cgroup);
    if let Some(q) = QUIET.get_ptr_mut(mix as u32 & (limits::QUIET_SLOTS - 1)) {
        // SAFETY: this CPU's slot; see `Quiet` for a write interrupted by
        // another program on this CPU.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*q).cgroup_id), cgroup);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*q).tag), mix ^ word);
        }
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// CLOCK_BOOTTIME nanoseconds as of the timekeeper's last tick: the time a
/// repeat or a packet is counted at (`FlowEntry::last_ns`). It reads no
/// clock source (`now_ns` reads the TSC, measured at a sixth of a repeated
/// `sendmsg4` here), and is up to one tick (1-10 ms) behind `now_ns`;
/// decisions, first sights and expiries keep `now_ns`.
#[inline(always)]
fn seen_ns() -> u64 {
    // SAFETY: plain data; the array always has its entry.
    let slept = unsafe { CLOCK.get(0) }.copied().unwrap_or(0);
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(slept)
}

#[inline(always)]
fn stat(index: u32) {
    if let Some(c) = FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

/// The selection of a cgroup under the word in force: this CPU's HOT copy
/// of its memo, else the memo when it was made under this word, else the
/// ancestor walk, remembered. A selected cgroup costs two array reads per
/// hook run while no memo changes; a cgroup outside every selected subtree
/// one lookup per hook run (QUIET, read before, spares most of them) and
/// one write per cgroup and switch.
#[inline(always)]
fn memo_of(slot: Slot, word: u64, owner: Owner, cgroup: u64) -> Memo {
    if let Some(m) = hot(cgroup, word) {
        return m;
    }
    // Read before MEMO: a change after it leaves what is filed stale.
    let gen = memo_gen();
    // SAFETY: plain data, copied out at once.
    if let Some(m) = unsafe { MEMO.get(&cgroup) } {
        if m.config_word == word {
            if m.selected_cgroup_id == 0 {
                note_quiet(cgroup, word);
            } else {
                note_hot(cgroup, word, gen, m);
            }
            return *m;
        }
    }
    let (selected_cgroup_id, selection) = find_selection(slot, owner, cgroup);
    let memo = Memo {
        config_word: word,
        selected_cgroup_id,
        selection,
        names_epoch: (now_ns() >> 6) as u32,
        _pad: 0,
    };
    // An unclassified cgroup is walked again at every attempt: the daemon
    // classifies it without a new word, by adding it to KNOWN.
    if selection.flags & Selection::UNCLASSIFIED == 0 {
        // A full LRU evicts the coldest cgroup; it costs one walk later.
        let _ = MEMO.insert(&cgroup, &memo, 0);
        memo_changed();
    }
    // An unclassified cgroup is its own selection (never 0): not quiet.
    if selected_cgroup_id == 0 {
        note_quiet(cgroup, word);
    }
    memo
}

/// Called by the DNS reader when a cgroup learned a name for an address:
/// the cgroup's cached decisions are made again (with the name).
#[inline(always)]
pub(crate) fn names_changed(cgroup: u64) {
    if let Some(m) = MEMO.get_ptr_mut(&cgroup) {
        // SAFETY: a pointer into the map's value; the add is atomic.
        unsafe { atomic_add(core::ptr::addr_of_mut!((*m).names_epoch), 1u32) };
        memo_changed();
    }
}

/// MEMO_GEN now (0 where it cannot be read: then nothing is filed in HOT).
#[inline(always)]
fn memo_gen() -> u64 {
    match MEMO_GEN.get_ptr(0) {
        // SAFETY: the array's value, aligned; one load.
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => 0,
    }
}

/// After a memo changed: every HOT slot is stale.
#[inline(always)]
fn memo_changed() {
    if let Some(g) = MEMO_GEN.get_ptr_mut(0) {
        // SAFETY: the array's value, aligned; the add is atomic.
        unsafe { atomic_add(g, 1u64) };
    }
}

/// The memo of a selected cgroup from this CPU's HOT, when it was filed
/// under `word` and no memo changed since.
#[inline(always)]
fn hot(cgroup: u64, word: u64) -> Option<Memo> {
    let mix = monitor_common::quiet_mix(cgroup);
    let h = HOT.get_ptr(mix as u32 & (limits::QUIET_SLOTS - 1))?;
    // SAFETY: this CPU's slot, read field by field; a torn slot fails the
    // tag (see `Hot`).
    let (id, gen, tag, memo) = unsafe {
        let memo = Memo {
            config_word: word,
            selected_cgroup_id: core::ptr::read_volatile(core::ptr::addr_of!(
                (*h).selected_cgroup_id
            )),
            selection: Selection {
                policy_id: core::ptr::read_volatile(core::ptr::addr_of!((*h).policy_id)),
                mode: core::ptr::read_volatile(core::ptr::addr_of!((*h).mode)),
                flags: core::ptr::read_volatile(core::ptr::addr_of!((*h).flags)),
                _pad: [0; 2],
            },
            names_epoch: core::ptr::read_volatile(core::ptr::addr_of!((*h).names_epoch)),
            _pad: 0,
        };
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*h).cgroup_id)),
            core::ptr::read_volatile(core::ptr::addr_of!((*h).memo_gen)),
            core::ptr::read_volatile(core::ptr::addr_of!((*h).tag)),
            memo,
        )
    };
    if id != cgroup
        || memo.selected_cgroup_id == 0
        || gen != memo_gen()
        || tag != monitor_common::hot_tag(cgroup, word, gen, &memo)
    {
        return None;
    }
    Some(memo)
}

/// Files a selected cgroup's memo, read from MEMO after MEMO_GEN was
/// `gen`, in this CPU's HOT.
#[inline(always)]
fn note_hot(cgroup: u64, word: u64, gen: u64, m: &Memo) {
    let mix = monitor_common::quiet_mix(cgroup);
    if let Some(h) = HOT.get_ptr_mut(mix as u32 & (limits::QUIET_SLOTS - 1)) {
        let tag = monitor_common::hot_tag(cgroup, word, gen, m);
        // SAFETY: this CPU's slot; see `Hot` for a write interrupted by
        // another program on this CPU.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).cgroup_id), cgroup);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).memo_gen), gen);
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*h).selected_cgroup_id),
                m.selected_cgroup_id,
            );
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*h).policy_id),
                m.selection.policy_id,
            );
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).names_epoch), m.names_epoch);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).mode), m.selection.mode);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).flags), m.selection.flags);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*h).tag), tag);
        }
    }
}

/// A socket-address hook: a cached decision for this cgroup and
/// destination costs a lookup and a count; anything else is decided,
/// reported and cached. Connected sockets remember the decision for the
/// egress backstop.
#[inline(always)]
fn judge(ctx: &SockAddrContext, attempt: &Attempt) -> i32 {
    // Fail open when the config entry cannot be read: an array map always
    // has its entry, so this is unreachable in practice, and failing closed
    // here would cut off every process on the host, selected or not.
    let Some((slot, set, word)) = in_force() else {
        return PASS;
    };
    let task_cgroup = Owner::Task.cgroup();
    // QUIET first: a cgroup no policy selects skips the memo.
    let memo = if quiet(task_cgroup, word) {
        Memo::default()
    } else {
        memo_of(slot, word, Owner::Task, task_cgroup)
    };
    if memo.selected_cgroup_id == 0 {
        // Not in any selected subtree: untouched, not reported, and the
        // socket gets no state (no allocation). A socket connected here
        // and used from a selected cgroup is judged there all the same: a
        // TCP socket made in a selected cgroup by its SYN (`egress`), a UDP
        // socket by the cgroup of the task that sends on it (`sender`). (A
        // connection made before its cgroup is selected is judged by the
        // sweep at the switch.)
        return PASS;
    }
    // The process is part of the key (see `FlowKey`): a register, not a lookup.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FlowKey {
        cgroup_id: task_cgroup,
        addr: attempt.addr,
        port: attempt.port,
        protocol: attempt.protocol,
        _pad: 0,
        tgid,
    };
    // SAFETY: the context is the program's bpf_sock_addr.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // A flow FLOWS had no room for may be a refusal kept in REFUSALS: one
    // more lookup on a miss (a first sight costs a decision anyway).
    let cached = match FLOWS.get_ptr_mut(&key) {
        Some(f) => Some(f),
        None => REFUSALS.get_ptr_mut(&key),
    };
    let verdict = match cached {
        // SAFETY: a pointer into the map's value, valid for this run.
        Some(f) if unsafe { fresh(&*f, word, memo.names_epoch, netns) } => {
            // SAFETY: as above; the counters are only ever added to.
            unsafe { count_attempt(&key, f, seen_ns()) };
            // SAFETY: as above.
            unsafe { (*f).verdict }
        }
        cached => {
            let now = now_ns();
            let judgement = decide(
                slot,
                &set,
                &memo.selection,
                task_cgroup,
                netns,
                &attempt.addr,
                false,
            );
            let verdict = verdict_of(judgement.decision.allowed, &memo.selection) as u8;
            let origin = Origin::task(task_cgroup);
            let exec_ns = process::identify(tgid, task_cgroup, &origin.comm, verdict);
            let outcome = Outcome {
                exec_ns,
                word,
                names_epoch: memo.names_epoch,
                selected_cgroup: memo.selected_cgroup_id,
                selection: &memo.selection,
                generation: set.generation,
                verdict,
                judgement: &judgement,
                now,
                attempt: true,
            };
            if file(&key, cached, attempt, &origin, &outcome) {
                emit(attempt, &origin, &outcome);
            }
            verdict
        }
    };
    if attempt.hook == Hook::Connect4 || attempt.hook == Hook::Connect6 {
        remember(ctx, task_cgroup, word, verdict, attempt);
    }
    if verdict == Verdict::Denied as u8 {
        REJECT
    } else {
        PASS
    }
}

/// Whether a cache entry still decides for a sock_addr hook: made under
/// the word in force, with the cgroup's names as they are, in the same
/// network namespace (names count per namespace), and its name (if it
/// used one) not expired.
#[inline(always)]
fn fresh(f: &FlowEntry, word: u64, names_epoch: u32, netns: u64) -> bool {
    f.config_word == word && f.names_epoch == names_epoch && f.netns == netns && unexpired(f)
}

/// Whether the name a cache entry used (if any) is unexpired, read on the
/// precise clock: only an entry with a name pays for reading it.
#[inline(always)]
fn unexpired(f: &FlowEntry) -> bool {
    f.valid_until_ns == u64::MAX || now_ns() < f.valid_until_ns
}

/// One more attempt the cache answered, seen at `seen` (`seen_ns`).
///
/// # Safety
/// `f` points into FLOWS' value for this run.
#[inline(always)]
unsafe fn count_attempt(key: &FlowKey, f: *mut FlowEntry, seen: u64) {
    // SAFETY: the caller's pointer; aligned u64 fields.
    unsafe {
        atomic_add(core::ptr::addr_of_mut!((*f).count), 1u64);
        note_seen(f, seen);
        touched(key, f);
    }
}

/// The harvest's generation (`monitor_common::harvest`); 0: no harvest
/// follows the changes.
#[inline(always)]
fn harvest_gen() -> u32 {
    // SAFETY: plain data; the array always has its entries.
    unsafe { HARVEST.get(harvest::GEN) }.map_or(0, |g| *g as u32)
}

/// Tells the harvest that `key`'s entry changed: its key into `TOUCHED`
/// at the entry's first change under the harvest's generation, so a
/// harvest reads the entries that changed instead of whole tables. A key
/// the ring has no room for is counted (`harvest::MISSED`), and the next
/// harvest reads everything.
///
/// # Safety
/// `f` points into FLOWS' or REFUSALS' value for this run.
#[inline(always)]
unsafe fn touched(key: &FlowKey, f: *mut FlowEntry) {
    let gen = harvest_gen();
    // SAFETY: the caller's pointer; an aligned u32 field. Two CPUs may
    // both find it stale and both write the key: the harvest reads it once.
    unsafe {
        let mine = core::ptr::addr_of_mut!((*f).harvest_gen);
        if gen == 0 || core::ptr::read_volatile(mine) == gen {
            return;
        }
        core::ptr::write_volatile(mine, gen);
    }
    announce(key);
}

/// Writes `key` into `TOUCHED`, or counts it as missed.
#[inline(always)]
fn announce(key: &FlowKey) {
    if TOUCHED
        .output::<FlowKey>(key, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        if let Some(m) = HARVEST.get_ptr_mut(harvest::MISSED) {
            // SAFETY: the array's slot; only ever added to here.
            unsafe { atomic_add(m, 1u64) };
        }
    }
}

/// Moves the entry's `last_ns` on to `seen`, never back: the coarse clock
/// may be behind the precise time the entry was decided at (`first_ns`).
/// Two CPUs may race here; either value is within a tick of the other.
///
/// # Safety
/// `f` points into FLOWS' value for this run.
#[inline(always)]
unsafe fn note_seen(f: *mut FlowEntry, seen: u64) {
    // SAFETY: the caller's pointer; an aligned u64 field.
    unsafe {
        let last = core::ptr::addr_of_mut!((*f).last_ns);
        if core::ptr::read_volatile(last) < seen {
            core::ptr::write_volatile(last, seen);
        }
    }
}

/// `*dst += v`, atomically; the old value is not read.
///
/// # Safety
/// `dst` is valid and aligned.
#[inline(always)]
unsafe fn atomic_add<T: Copy>(dst: *mut T, v: T) {
    // SAFETY: the caller's pointer.
    unsafe {
        core::intrinsics::atomic_xadd::<T, T, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, v,
        );
    }
}

/// What a decision settled, for the cache entry and the event.
struct Outcome<'a> {
    word: u64,
    names_epoch: u32,
    selected_cgroup: u64,
    selection: &'a Selection,
    generation: u32,
    verdict: u8,
    judgement: &'a Judgement,
    now: u64,
    /// Whether this decision is an attempt (a sock_addr hook), which a
    /// repeat counts, or a packet (egress), which it does not.
    attempt: bool,
    /// The deciding process's identity (`process::identify`), 0: none.
    exec_ns: u64,
}

/// Files a decision into FLOWS: a new entry, or the stale one made anew
/// (its counters kept). Returns whether it is worth an event: a new flow,
/// a decision that differs from the stale one in what a person reads
/// (verdict, rule, policy, place, name), or one the full table could not
/// keep (then the event is the record). A stale entry decided the same
/// way again counts as an attempt instead.
#[inline(always)]
fn file(
    key: &FlowKey,
    cached: Option<*mut FlowEntry>,
    attempt: &Attempt,
    origin: &Origin,
    o: &Outcome,
) -> bool {
    stat(flow_stat::DECIDED);
    let j = o.judgement;
    let valid_until_ns = if j.name_expires_ns != 0 {
        j.name_expires_ns
    } else {
        u64::MAX
    };
    if let Some(f) = cached {
        // SAFETY: a pointer into the map's value, valid for this run. The
        // decision fields are rewritten in place (the counters stay), the
        // word last, so a hook on another CPU that sees the new word sees
        // the decision it belongs to (stores are not reordered on x86-64;
        // elsewhere a racing hook may at worst read one half-written entry
        // once).
        unsafe {
            let same = (*f).verdict == o.verdict
                && (*f).rule == j.decision.rule
                && (*f).policy_id == o.selection.policy_id
                && (*f).country == j.region.country
                && (*f).cloud_region == j.cloud_region
                && (*f).name_hash == j.name_hash
                && (*f).exec_ns == o.exec_ns;
            (*f).valid_until_ns = valid_until_ns;
            (*f).netns = j.netns;
            (*f).selected_cgroup_id = o.selected_cgroup;
            (*f).name_hash = j.name_hash;
            (*f).policy_id = o.selection.policy_id;
            (*f).cloud_region = j.cloud_region;
            (*f).names_epoch = o.names_epoch;
            (*f).policy_generation = o.generation;
            (*f).country = j.region.country;
            (*f).continent = j.region.continent;
            (*f).verdict = o.verdict;
            (*f).rule = j.decision.rule;
            (*f).mode = o.selection.mode;
            (*f).country_source = j.source as u8;
            // Another image under the same tgid (an exec, a reused pid):
            // the entry counts for it from now on, named by its event.
            (*f).exec_ns = o.exec_ns;
            if o.exec_ns != 0 {
                (*f).comm = origin.comm;
            }
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*f).config_word), o.word);
            if same {
                if o.attempt {
                    count_attempt(key, f, o.now);
                }
                return false;
            }
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*f).last_ns), o.now);
            touched(key, f);
        }
        return true;
    }
    // Built in per-CPU room: the stack of a hook is 512 bytes.
    let Some(entry) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's scratch value, ours for this run.
    let entry = unsafe { &mut *entry };
    entry.config_word = o.word;
    entry.valid_until_ns = valid_until_ns;
    entry.netns = j.netns;
    entry.selected_cgroup_id = o.selected_cgroup;
    entry.name_hash = j.name_hash;
    entry.first_ns = o.now;
    entry.last_ns = o.now;
    entry.count = 0;
    entry.packets = 0;
    entry.bytes = 0;
    entry.policy_id = o.selection.policy_id;
    entry.cloud_region = j.cloud_region;
    entry.names_epoch = o.names_epoch;
    entry.policy_generation = o.generation;
    entry.comm = origin.comm;
    entry.country = j.region.country;
    entry.continent = j.region.continent;
    entry.verdict = o.verdict;
    entry.rule = j.decision.rule;
    entry.mode = o.selection.mode;
    entry.country_source = j.source as u8;
    entry.family = attempt.family;
    entry.hook = attempt.hook as u8;
    entry._pad = [0; 2];
    // A new entry tells the harvest at once: its later changes under this
    // generation write no key.
    let gen = harvest_gen();
    entry.harvest_gen = gen;
    entry.exec_ns = o.exec_ns;
    if FLOWS.insert(key, &*entry, BPF_NOEXIST).is_ok() {
        stat(flow_stat::FILED);
        if gen != 0 {
            announce(key);
        }
        return true;
    }
    // Another CPU filed it first: this attempt is one of its repeats.
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        if o.attempt {
            // SAFETY: as above.
            unsafe { count_attempt(key, f, o.now) };
        }
        return false;
    }
    // Full. A refusal goes to its own table, which allowed flows cannot
    // fill: its repeats stay counts (harvested like FLOWS') instead of an
    // event each, which a flood could make more than the ring's reserve.
    if o.verdict != Verdict::Allowed as u8 {
        if REFUSALS.insert(key, &*entry, BPF_NOEXIST).is_ok() {
            stat(flow_stat::REFUSALS_FILED);
            if gen != 0 {
                announce(key);
            }
            return true;
        }
        if let Some(f) = REFUSALS.get_ptr_mut(key) {
            if o.attempt {
                // SAFETY: as above.
                unsafe { count_attempt(key, f, o.now) };
            }
            return false;
        }
    }
    // Full: the event is the record of this attempt.
    stat(flow_stat::OVERFLOW);
    true
}

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn verdict_of(allowed: bool, selection: &Selection) -> Verdict {
    // Only an explicit enforce denies; any other mode byte only reports.
    if allowed {
        Verdict::Allowed
    } else if selection.mode == Mode::Enforce as u8 {
        Verdict::Denied
    } else {
        Verdict::WouldDeny
    }
}

#[inline(always)]
fn socks() -> *mut core::ffi::c_void {
    core::ptr::addr_of!(SOCKS).cast_mut().cast()
}

/// Remembers a connected socket's decision in its socket-local storage,
/// made here if the socket has none.
#[inline(always)]
fn remember(ctx: &SockAddrContext, cgroup_id: u64, word: u64, verdict: u8, attempt: &Attempt) {
    // SAFETY: the context's socket, as the sk_storage helper takes it.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return;
    }
    let state = SockState {
        config_word: word,
        cgroup_id,
        addr: attempt.addr,
        port: attempt.port,
        protocol: attempt.protocol,
        verdict,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    // SAFETY: plain helper call; the value is copied in when created.
    let p = unsafe {
        bpf_sk_storage_get(
            socks(),
            sk.cast(),
            core::ptr::addr_of!(state).cast_mut().cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if !p.is_null() {
        // SAFETY: the socket's own storage; a connect runs once per socket
        // at a time (the socket lock is held).
        unsafe { *p = state };
    }
}

const BPF_SK_STORAGE_GET_F_CREATE: u32 = 1;

/// Never a CONFIG word (bits 3..32 of a word are zero): socket state filed
/// under it is stale at once.
const NO_WORD: u64 = 1 << 3;

/// Whether the owner's cgroup is under a selected one (policy in force).
#[inline(always)]
pub(crate) fn selected(owner: Owner) -> bool {
    match in_force() {
        Some((slot, _, word)) => memo_of(slot, word, owner, owner.cgroup()).selected_cgroup_id != 0,
        None => false,
    }
}

/// The selection of the owner's cgroup or its nearest selected ancestor;
/// id 0 when there is none. A cgroup under a watched parent that is
/// neither selected nor known to the daemon is unclassified: its own id,
/// with a selection of policy 0 flagged `UNCLASSIFIED`, in enforce mode
/// when an enforcing policy watches a parent of it. (Plain values, not an
/// Option: an Option's payload is left uninitialised while it is None, and
/// the verifier refuses to copy uninitialised registers.)
#[inline(always)]
fn find_selection(slot: Slot, owner: Owner, current: u64) -> (u64, Selection) {
    // SAFETY: values are plain data, copied out at once.
    if let Some(sel) = unsafe { slot.select().get(&current) } {
        return (current, *sel);
    }
    // Walk from the root down; the deepest selected ancestor wins.
    let mut found_id: u64 = 0;
    let mut found = Selection::default();
    let mut level: i32 = 0;
    while level < limits::MAX_CGROUP_DEPTH as i32 {
        let id = owner.ancestor(level);
        if id == 0 || id == current {
            break;
        }
        // SAFETY: as above.
        if let Some(sel) = unsafe { slot.select().get(&id) } {
            found_id = id;
            found = *sel;
        }
        level += 1;
    }
    if found_id != 0 {
        return (found_id, found);
    }
    // SAFETY: as above.
    if unsafe { KNOWN.get(&current) }.is_some() {
        return (0, found);
    }
    // Not selected and not classified: is a parent watched?
    let mut watched: u8 = 0;
    let mut level: i32 = 0;
    while level < limits::MAX_CGROUP_DEPTH as i32 {
        let id = owner.ancestor(level);
        if id == 0 || id == current {
            break;
        }
        // SAFETY: as above.
        if let Some(w) = unsafe { slot.watch().get(&id) } {
            watched |= *w;
        }
        level += 1;
    }
    if watched == 0 {
        return (0, found);
    }
    (
        current,
        Selection {
            policy_id: 0,
            mode: if watched & 2 != 0 {
                Mode::Enforce as u8
            } else {
                Mode::Monitor as u8
            },
            flags: Selection::UNCLASSIFIED,
            _pad: [0; 2],
        },
    )
}

/// What a decision concluded and what it was made from, for the event.
struct Judgement {
    decision: Decision,
    region: Region,
    source: CountrySource,
    cloud_region: u32,
    name_hash: u64,
    /// When the name the decision used expires (possibly past, for an
    /// established socket); 0 when it used none.
    name_expires_ns: u64,
    /// The network namespace (cookie) whose names the decision used.
    netns: u64,
}

/// Looks up the place (the cloud region's documented location where the
/// provider publishes one, else the country database) and the name this
/// cgroup resolved the address from, and hands the policy's lookups to the
/// shared decision order (`monitor_common::decide`), which calls each only
/// when the ones before it did not decide.
#[inline(always)]
fn decide(
    slot: Slot,
    set: &InForce,
    selection: &Selection,
    cgroup_id: u64,
    netns: u64,
    addr: &[u8; 16],
    established: bool,
) -> Judgement {
    let policy_id = selection.policy_id;
    let key = Key::new(
        32 + 128,
        PolicyAddr {
            policy_id_be: policy_id.to_be_bytes(),
            addr: *addr,
        },
    );
    let addr_key = Key::new(128, *addr);
    let cloud_trie = if set.cloud_slot == 0 {
        &CLOUD_A
    } else {
        &CLOUD_B
    };
    let cloud = cloud_trie.get(&addr_key).copied().unwrap_or_default();
    let (region, source) = if cloud.located == 1 {
        (
            Region {
                country: cloud.country,
                continent: cloud.continent,
            },
            CountrySource::Cloud,
        )
    } else {
        let region = if set.geo_slot == 0 {
            geo_table::lookup(addr, |i| geo_table::word_of(i, |e| GEO_A.get(e)))
        } else {
            geo_table::lookup(addr, |i| geo_table::word_of(i, |e| GEO_B.get(e)))
        };
        (region, CountrySource::Geoip)
    };
    let name = dns::name_of(cgroup_id, netns, addr, established);
    let name_hash = name.map_or(0, |n| n.name_hash);
    // Kept even when an established socket used it expired: a new connect
    // to the address must not find the decision fresh.
    let name_expires_ns = name.map_or(0, |n| n.expires_ns);
    let region_key = RegionKey { policy_id, region };
    if selection.flags & Selection::UNCLASSIFIED != 0 {
        return Judgement {
            decision: Decision {
                allowed: false,
                rule: Rule::Unclassified as u8,
            },
            region,
            source,
            cloud_region: cloud.region,
            name_hash,
            name_expires_ns,
            netns,
        };
    }
    let decision = monitor_common::decide(
        || slot.deny().get(&key).is_some(),
        || match name {
            Some(n) if selection.flags & Selection::HAS_DOMAINS != 0 => {
                domain_action(slot, policy_id, n)
            }
            _ => 0,
        },
        || {
            // SAFETY: values copied out at once.
            let by_region = unsafe { slot.region_rules().get(&region_key) }
                .copied()
                .unwrap_or_default();
            let by_cloud = if cloud.region != 0 && selection.flags & Selection::HAS_CLOUD_RULES != 0
            {
                let cloud_key = CloudKey {
                    policy_id,
                    region: cloud.region,
                };
                // SAFETY: as above.
                unsafe { slot.cloud_rules().get(&cloud_key) }
                    .copied()
                    .unwrap_or_default()
            } else {
                RegionRule::default()
            };
            monitor_common::stronger(by_cloud, by_region)
        },
        || slot.allow().get(&key).is_some(),
    );
    Judgement {
        decision,
        region,
        source,
        cloud_region: cloud.region,
        name_hash,
        name_expires_ns,
        netns,
    }
}

/// What the policy's domain rules say of a name: the exact name, then every
/// suffix the name keeps (`*.` rules); a deny anywhere wins. An `Action`
/// byte, 0 when no rule matches.
#[inline(always)]
fn domain_action(slot: Slot, policy_id: u32, name: &NameEntry) -> u8 {
    let mut allowed = false;
    let exact = DomainKey {
        policy_id,
        kind: DOMAIN_EXACT,
        hash: name.name_hash,
    };
    // SAFETY: value copied out at once.
    if let Some(r) = unsafe { slot.domains().get(&exact) } {
        if r.action == Action::Deny as u8 {
            return Action::Deny as u8;
        }
        allowed |= r.action == Action::Allow as u8;
    }
    let mut k = 0;
    while k < monitor_common::dns::SUFFIXES {
        if k >= name.suffix_count as usize {
            break;
        }
        let wildcard = DomainKey {
            policy_id,
            kind: DOMAIN_WILDCARD,
            hash: name.suffixes[k],
        };
        // SAFETY: as above.
        if let Some(r) = unsafe { slot.domains().get(&wildcard) } {
            if r.action == Action::Deny as u8 {
                return Action::Deny as u8;
            }
            allowed |= r.action == Action::Allow as u8;
        }
        k += 1;
    }
    if allowed {
        Action::Allow as u8
    } else {
        0
    }
}

/// Who made the attempt, as far as the hook can tell.
struct Origin {
    cgroup_id: u64,
    pid_tgid: u64,
    uid_gid: u64,
    comm: [u8; 16],
}

impl Origin {
    #[inline(always)]
    fn task(cgroup_id: u64) -> Self {
        Origin {
            cgroup_id,
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        }
    }
}

/// Bytes one decision takes in the ring buffer: its 8-byte header and the
/// record, rounded up to 8.
const RECORD_BYTES: u64 = (8 + core::mem::size_of::<DecisionEvent>() as u64).div_ceil(8) * 8;

/// Whether a record that is not a refusal may take room in the ring,
/// which holds `used` unread bytes: not in its last share, kept for the
/// decisions that are not "allow" (`limits::RING_RESERVE_DIVISOR`). Two
/// CPUs checking at once may each add a record past the line: the reserve
/// shrinks by a record per CPU at most.
#[inline(always)]
pub(crate) fn below_reserve(used: u64) -> bool {
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    used < size - size / limits::RING_RESERVE_DIVISOR
}

/// The ring's unread bytes (reserved records included).
#[inline(always)]
pub(crate) fn ring_used() -> u64 {
    EVENTS.query(BPF_RB_AVAIL_DATA as u64)
}

/// Adds one to this CPU's `LOST[index]`.
#[inline(always)]
pub(crate) fn count_lost(index: u32) {
    if let Some(c) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn emit(attempt: &Attempt, origin: &Origin, o: &Outcome) {
    let judgement = o.judgement;
    let selection = o.selection;
    let used = ring_used();
    // A denial, would-deny or unclassified refusal may use the whole ring;
    // an allowed first sight stops where the reserve starts, so no flood
    // of them pushes a refusal out (its loss is counted apart).
    let refusal = o.verdict != Verdict::Allowed as u8;
    if !refusal && !below_reserve(used) {
        count_lost(lost::RING_FULL);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DecisionEvent>(0) else {
        count_lost(if refusal {
            lost::DENIALS_RING_FULL
        } else {
            lost::RING_FULL
        });
        return;
    };
    // Numbered only once it has a place in the ring: a number missing from
    // what the daemon stored is an event the daemon lost, not the kernel.
    let seq = match LOST.get_ptr_mut(lost::SEQ) {
        // SAFETY: per-CPU slot, only this CPU writes it (a task preempted
        // here by another on this CPU may share a number: counted once).
        Some(p) => unsafe {
            let n = *p + 1;
            *p = n;
            n as u32
        },
        None => 0,
    };
    // Written in place: the stack of a hook is 512 bytes.
    // SAFETY: the reserved record, ours until submitted.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = EventHeader {
        kind: kind::DECISION,
        version: DECISION_VERSION,
        len: core::mem::size_of::<DecisionEvent>() as u32,
    };
    event.boot_ns = o.now;
    event.cgroup_id = origin.cgroup_id;
    event.selected_cgroup_id = o.selected_cgroup;
    event.pid = origin.pid_tgid as u32;
    event.tgid = (origin.pid_tgid >> 32) as u32;
    event.uid = origin.uid_gid as u32;
    event.gid = (origin.uid_gid >> 32) as u32;
    event.policy_id = selection.policy_id;
    event.policy_generation = o.generation;
    event.dst_addr = attempt.addr;
    event.comm = origin.comm;
    event.dst_port = attempt.port;
    event.country = judgement.region.country;
    event.continent = judgement.region.continent;
    event.hook = attempt.hook as u8;
    event.family = attempt.family;
    event.protocol = attempt.protocol;
    event.verdict = o.verdict;
    event.rule = judgement.decision.rule;
    event.mode = selection.mode;
    event.cloud_region = judgement.cloud_region;
    event.name_hash = judgement.name_hash;
    event.country_source = judgement.source as u8;
    event._pad = 0;
    // SAFETY: a helper without arguments.
    event.cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as u16;
    event.seq = seq;
    event.exec_ns = o.exec_ns;
    // Wake the daemon only once a batch waits: a wakeup per event is an
    // interrupt charged to the caller (a VM exit on a virtual machine); the
    // daemon also drains on a short timer, so a lone event waits at most
    // that long. Only the record that crosses the threshold wakes it: while
    // a slow daemon lags past it, waking it for every record cost a
    // self-IPI each (more than half of a new destination's `sendmsg4` under
    // load, by perf). Two CPUs crossing at once may both skip; the timer
    // drains then.
    // The unread bytes with this record (read before it was reserved).
    let avail = used + RECORD_BYTES;
    // An unclassified cgroup wakes the daemon at once: it classifies the
    // cgroup when it reads this.
    let flags = if judgement.decision.rule == Rule::Unclassified as u8
        || (avail >= limits::WAKEUP_BYTES && avail < limits::WAKEUP_BYTES + RECORD_BYTES)
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
}

/// Not attached anywhere: the daemon runs it (`BPF_PROG_TEST_RUN`) on each
/// socket of a selected cgroup that exists when a policy set takes effect,
/// so a connection older than the policy is judged by the same code and
/// maps as a new one. Returns `verdict | rule << 8` (0: not selected under
/// the set in force); what is not allowed is an event of hook
/// `sock_destroy` (the daemon then destroys the socket where the policy
/// enforces).
#[socket_filter]
pub fn judge_socket(_ctx: SkBuffContext) -> i64 {
    let Some(s) = SWEEP.get(0) else {
        return 0;
    };
    let s = *s;
    let Some((slot, set, word)) = in_force() else {
        return 0;
    };
    // SAFETY: plain data, copied out at once.
    let Some(selection) = (unsafe { slot.select().get(&s.selected_cgroup_id) }).copied() else {
        return 0;
    };

    let judgement = decide(slot, &set, &selection, s.cgroup_id, s.netns, &s.addr, true);
    let verdict = verdict_of(judgement.decision.allowed, &selection) as u8;
    if verdict != Verdict::Allowed as u8 {
        let attempt = Attempt {
            hook: Hook::SockDestroy,
            family: s.family,
            protocol: s.protocol,
            addr: s.addr,
            port: s.port,
        };
        let origin = Origin {
            cgroup_id: s.cgroup_id,
            pid_tgid: 0,
            uid_gid: u64::from(s.uid),
            comm: [0; 16],
        };
        let outcome = Outcome {
            word,
            names_epoch: 0,
            selected_cgroup: s.selected_cgroup_id,
            selection: &selection,
            generation: set.generation,
            verdict,
            judgement: &judgement,
            now: now_ns(),
            attempt: false,
            exec_ns: 0,
        };
        emit(&attempt, &origin, &outcome);
    }
    i64::from(verdict) | (i64::from(judgement.decision.rule) << 8)
}

/// The backstop: every IP packet a socket of the host sends passes here.
/// A packet of a socket whose destination a sock_addr hook already judged
/// under the policy set in force costs one lookup. Everything else is
/// judged here by the socket's cgroup: raw and ping sockets, sockets
/// connected before the policy changed, a socket handed to a task outside
/// the cgroup that created it. TCP sockets no hook ever saw (accepted
/// connections, or connected before the daemon first ran) are left alone:
/// their packets are replies to inbound connections, not egress.
#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    match judge_packet::<false>(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// The backstop's decision for a packet no cache entry answered (a first
/// sight, or an entry made under another policy set), tail-called by
/// `egress` through `EGRESS_DECIDE` and never attached: it judges the
/// packet again from the start, skipping the cache, and files the
/// decision. Kept out of `egress`, it leaves the per-packet program a third
/// of the instructions to verify (and room to grow), and about 40% smaller
/// for the CPU to fetch.
#[cgroup_skb(egress)]
pub fn egress_decide(ctx: SkBuffContext) -> i32 {
    match judge_packet::<true>(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// The sender's decision for a datagram of a connected UDP socket sent
/// from a cgroup that neither made nor connected it (`handed_over`): by
/// its process after it moved, or by a process the descriptor was passed
/// to (SCM_RIGHTS, pidfd_getfd, an inherited descriptor). Tail-called by
/// `egress` (through `EGRESS_DECIDE` at `tail::SENDER`, never attached)
/// when no cache entry of the sender's answers; what the sender does not
/// refuse goes on to `egress_decide`, which judges it by the socket's
/// cgroup, as `egress` would have gone on to.
#[cgroup_skb(egress)]
pub fn sender_decide(ctx: SkBuffContext) -> i32 {
    let verdict = match judge_sender(&ctx) {
        Ok(v) | Err(v) => v,
    };
    if verdict == REJECT {
        return REJECT;
    }
    // SAFETY: the context is the program's.
    unsafe { EGRESS_DECIDE.tail_call(&ctx, tail::DECIDE) };
    // Only reached without `egress_decide` in the array (it is put there
    // before this program): the socket's own cgroup cannot be asked, so
    // only a socket of a cgroup known to be selected by no policy passes.
    match in_force() {
        Some((_, _, word)) if quiet(Owner::Skb(ctx.skb.skb).cgroup(), word) => PASS,
        _ => REJECT,
    }
}

/// The cgroup of the task sending a datagram of a connected UDP socket,
/// when neither the socket's own cgroup nor the cgroup that connected it
/// (its state's, when a selected cgroup's hook connected it); else 0. The
/// socket was handed over (SCM_RIGHTS, `pidfd_getfd`, an inherited
/// descriptor) or its process moved: a user socket's UDP datagram leaves
/// in its sender's context (`udp_sendmsg` and `udp_push_pending_frames`
/// run in the calling task, never in a softirq), so the sender's cgroup
/// judges it, as a sock_addr hook would have. Ordered for what most
/// packets are: a packet of an unconnected socket or a connection being
/// made ends at one field read, a connection's packet sent where its
/// socket was made at one helper call more.
#[inline(always)]
fn handed_over(skb: *mut __sk_buff, socket_cgroup: u64) -> u64 {
    // SAFETY: the context's socket pointer; `state` is readable in any
    // socket the kernel gives (no helper call for a full socket first).
    // The socket's state, not its peer port: a UDP socket may be
    // connected to port 0. An unconnected datagram was judged at its
    // sendmsg by the task that sent it.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() || unsafe { (*sk).state } != TCP_ESTABLISHED {
        return 0;
    }
    let cgroup = Owner::Task.cgroup();
    // SAFETY: a helper without arguments.
    if cgroup == socket_cgroup || unsafe { bpf_get_current_pid_tgid() } >> 32 == 0 {
        // Sent where it was made, or by the idle task (no process).
        return 0;
    }
    let full = full_sock(skb);
    // SAFETY: a full socket from the helper; `protocol` is readable in it.
    if full.is_null() || unsafe { (*full).protocol } != u32::from(IPPROTO_UDP) {
        return 0;
    }
    let state = storage_of(full);
    // SAFETY: the socket's own storage, valid for this run.
    if !state.is_null() && unsafe { (*state).cgroup_id } == cgroup {
        // Sent where a selected cgroup's hook connected it.
        return 0;
    }
    cgroup
}

/// Whether `cgroup`, the sender of a datagram `handed_over` found, refuses
/// it: a cache entry of the sender's answers; anything else goes to
/// `sender_decide` (a tail call, which ends this program and decides the
/// packet: what it does not refuse, `egress_decide` judges by the socket's
/// cgroup).
#[inline(always)]
fn sent_by(ctx: &SkBuffContext, word: u64, cgroup: u64) -> bool {
    if quiet(cgroup, word) {
        return false;
    }
    // The sender's memo as filed (no ancestor walk here: that is
    // `sender_decide`'s, and keeps this program's paths few).
    let memo = match hot(cgroup, word) {
        Some(m) => m,
        // SAFETY: plain data, copied out at once.
        None => match unsafe { MEMO.get(&cgroup) } {
            Some(m) if m.config_word == word => *m,
            _ => {
                // SAFETY: the context is the program's.
                unsafe { EGRESS_DECIDE.tail_call(ctx, tail::SENDER) };
                // Only reached without `sender_decide` in the array.
                return true;
            }
        },
    };
    if memo.selected_cgroup_id == 0 {
        return false;
    }
    let (family, addr, l4_offset, port) = udp_destination(ctx);
    if family == 0 {
        return false;
    }
    let key = FlowKey {
        cgroup_id: cgroup,
        addr,
        port,
        protocol: IPPROTO_UDP,
        _pad: 0,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    let skb = ctx.skb.skb;
    // SAFETY: the context is the program's __sk_buff.
    let netns = unsafe { bpf_get_netns_cookie(skb.cast()) };
    if let Some(f) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        if unsafe { fresh(&*f, word, memo.names_epoch, netns) } {
            // SAFETY: as above.
            unsafe { add_packet(ctx, &key, f, IPPROTO_UDP, l4_offset, family, seen_ns()) };
            // SAFETY: as above.
            return unsafe { (*f).verdict } == Verdict::Denied as u8;
        }
    }
    // SAFETY: the context is the program's.
    unsafe { EGRESS_DECIDE.tail_call(ctx, tail::SENDER) };
    // Only reached without `sender_decide` in the array: a datagram the
    // sender's cgroup cannot judge, refused where its policy enforces (and
    // above, wherever the sender's selection is not filed).
    verdict_of(false, &memo.selection) == Verdict::Denied
}

/// The destination of a UDP datagram (family, address as the maps hold it,
/// transport header offset, port); family 0 when the packet is not one.
/// (Plain values, not an Option: see `find_selection`.)
#[inline(always)]
fn udp_destination(ctx: &SkBuffContext) -> (u8, [u8; 16], usize, u16) {
    // SAFETY: the context is the program's __sk_buff.
    let eth_proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (family, addr, l4_offset) = if eth_proto == ETH_P_IP {
        let Ok(h) = ctx.load::<[u8; 20]>(0) else {
            return (0, [0; 16], 0, 0);
        };
        if h[9] != IPPROTO_UDP {
            return (0, [0; 16], 0, 0);
        }
        (
            AF_INET,
            mapped_v4([h[16], h[17], h[18], h[19]]),
            ((h[0] & 0x0f) as usize) * 4,
        )
    } else if eth_proto == ETH_P_IPV6 {
        let (Ok(addr), Ok(next)) = (ctx.load::<[u8; 16]>(24), ctx.load::<u8>(6)) else {
            return (0, [0; 16], 0, 0);
        };
        if next != IPPROTO_UDP {
            return (0, [0; 16], 0, 0);
        }
        (AF_INET6, addr, 40)
    } else {
        return (0, [0; 16], 0, 0);
    };
    let port = u16::from_be(ctx.load::<u16>(l4_offset + 2).unwrap_or(0));
    (family, addr, l4_offset, port)
}

#[inline(always)]
fn judge_sender(ctx: &SkBuffContext) -> Result<i32, i32> {
    let skb = ctx.skb.skb;
    let cgroup = handed_over(skb, Owner::Skb(skb).cgroup());
    if cgroup == 0 {
        // Not such a datagram: `egress` judges it by its socket.
        return Ok(PASS);
    }
    let (family, addr, l4_offset, port) = udp_destination(ctx);
    if family == 0 {
        return Ok(PASS);
    }
    let l4 = IPPROTO_UDP;
    let Some((slot, set, word)) = in_force() else {
        return Ok(PASS);
    };
    let memo = memo_of(slot, word, Owner::Task, cgroup);
    if memo.selected_cgroup_id == 0 {
        return Ok(PASS);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FlowKey {
        cgroup_id: cgroup,
        addr,
        port,
        protocol: l4,
        _pad: 0,
        tgid,
    };
    // SAFETY: the context is the program's __sk_buff.
    let netns = unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast()) };
    let verdict = match FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        Some(f) if unsafe { fresh(&*f, word, memo.names_epoch, netns) } => {
            // SAFETY: as above.
            unsafe { add_packet(ctx, &key, f, l4, l4_offset, family, seen_ns()) };
            // SAFETY: as above.
            return Ok(if unsafe { (*f).verdict } == Verdict::Denied as u8 {
                REJECT
            } else {
                PASS
            });
        }
        cached => {
            let now = now_ns();
            let judgement = decide(slot, &set, &memo.selection, cgroup, netns, &addr, false);
            let verdict = verdict_of(judgement.decision.allowed, &memo.selection) as u8;
            let attempt = Attempt {
                hook: Hook::Egress,
                family,
                protocol: l4,
                addr,
                port,
            };
            let origin = Origin::task(cgroup);
            let exec_ns = process::identify(tgid, cgroup, &origin.comm, verdict);
            let outcome = Outcome {
                exec_ns,
                word,
                names_epoch: memo.names_epoch,
                selected_cgroup: memo.selected_cgroup_id,
                selection: &memo.selection,
                generation: set.generation,
                verdict,
                judgement: &judgement,
                now,
                attempt: false,
            };
            if file(&key, cached, &attempt, &origin, &outcome) && verdict != Verdict::Allowed as u8
            {
                emit(&attempt, &origin, &outcome);
            }
            verdict
        }
    };
    count_packet(ctx, &key, l4, l4_offset, family);
    Ok(if verdict == Verdict::Denied as u8 {
        REJECT
    } else {
        PASS
    })
}

/// A cgroup was made, anywhere on the host (raw tracepoint `cgroup_mkdir`,
/// run before `mkdir` returns, so before any process can be in it): the
/// daemon is woken at once to classify it, usually before its first
/// process connects. What reaches a watched parent before that is refused
/// as unclassified (`Selection::UNCLASSIFIED`); this only shortens the wait.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_made(_ctx: RawTracePointContext) -> i32 {
    // Kept out of the reserve: a refusal of the cgroup wakes the daemon too.
    if !below_reserve(ring_used()) {
        count_lost(lost::RING_FULL);
        return 0;
    }
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        // SAFETY: the reserved record, ours until submitted.
        unsafe {
            entry.as_mut_ptr().write(EventHeader {
                kind: kind::CGROUP_MADE,
                version: 1,
                len: core::mem::size_of::<EventHeader>() as u32,
            })
        };
        entry.submit(u64::from(BPF_RB_FORCE_WAKEUP));
    }
    0
}

/// Reads the DNS answers selected cgroups receive (see `dns`); never drops.
#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    dns::learn(&ctx);
    PASS
}

/// `egress` (`DECIDE` false: the cache answers, or the decision is
/// handed to `egress_decide`) and `egress_decide` (`DECIDE` true: the
/// cache is passed over and the packet decided).
#[inline(always)]
fn judge_packet<const DECIDE: bool>(ctx: &SkBuffContext) -> Result<i32, i32> {
    let skb = ctx.skb.skb;
    let Some((slot, set, word)) = in_force() else {
        return Ok(PASS);
    };
    let owner = Owner::Skb(skb);
    let socket_cgroup = owner.cgroup();
    // A datagram of a connected UDP socket sent from a cgroup that neither
    // made nor connected it is judged by its sender's cgroup first
    // (`sent_by`, or `sender_decide`, which goes on to `egress_decide`),
    // then by the socket's as any packet. It is counted in the sender's
    // flow and, as any packet of the socket, in the socket's. (Not
    // counting it there as well keeps the sender's cgroup live through
    // the paths below: 65% more for the verifier to walk in `egress`, 39%
    // in `egress_decide`.)
    if !DECIDE {
        let sender = handed_over(skb, socket_cgroup);
        if sender != 0 && sent_by(ctx, word, sender) {
            return Ok(REJECT);
        }
    }
    // A socket of a cgroup no policy selects ends here: whatever its
    // state, the decision below would pass it.
    if quiet(socket_cgroup, word) {
        return Ok(PASS);
    }
    // SAFETY: the context is the program's __sk_buff.
    let eth_proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut addr = [0u8; 16];
    // False where the transport header is not at its fixed place.
    let mut whole = true;
    let (family, l4, l4_offset) = if eth_proto == ETH_P_IP {
        // The fixed header in one read (a helper call each is most of
        // what reading it costs).
        let h: [u8; 20] = ctx.load(0).map_err(|_| PASS)?;
        addr = mapped_v4([h[16], h[17], h[18], h[19]]);
        (AF_INET, h[9], ((h[0] & 0x0f) as usize) * 4)
    } else if eth_proto == ETH_P_IPV6 {
        addr = ctx.load(24).map_err(|_| PASS)?;
        let (next, extended) = ipv6_upper_layer(ctx)?;
        // Behind extension headers the transport header is not read (no
        // ports, no DNS noting; the payload count includes the extension
        // headers): a variable offset there is more paths than the
        // verifier takes. Such packets are rare outside MLD and tests.
        whole = !extended;
        (AF_INET6, next, 40)
    } else {
        return Ok(PASS);
    };
    let ports = whole && (l4 == IPPROTO_TCP || l4 == IPPROTO_UDP);
    let port: u16 = if ports {
        u16::from_be(ctx.load::<u16>(l4_offset + 2).unwrap_or(0))
    } else {
        0
    };
    // The process: the one that connected the socket (below), else the
    // sender. A packet of a socket no connect judged (an unconnected
    // datagram, a raw or ping socket) leaves in its sender's sendmsg,
    // whose sendmsg4 filed the flow under its tgid. Set without a branch:
    // one here doubles what the verifier walks after it.
    let mut key = FlowKey {
        cgroup_id: socket_cgroup,
        addr,
        port,
        protocol: l4,
        _pad: 0,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    let full = full_sock(skb);
    let state = storage_of(full);
    // Judged before, at this destination by this cgroup: only the policy
    // set changed since (an established connection keeps the name it was
    // judged with).
    let mut established = false;
    // SAFETY: the socket's own storage, valid for this run.
    if !state.is_null() {
        // SAFETY: the socket's own storage, valid for this run.
        let st = unsafe { *state };
        established = st.addr == addr && st.port == port && st.cgroup_id == socket_cgroup;
        if established {
            // Counted with the attempts of the process that connected it.
            key.tgid = st.tgid;
        }
        if !DECIDE && established && st.config_word == word {
            count_packet(ctx, &key, l4, l4_offset, family);
            if st.verdict == Verdict::Allowed as u8 && ports && port == monitor_common::dns::PORT {
                dns::note_query(ctx, l4, l4_offset, &addr);
            }
            return Ok(if st.verdict == Verdict::Denied as u8 {
                REJECT
            } else {
                PASS
            });
        }
    } else if l4 == IPPROTO_TCP && !connecting(full) {
        // A TCP socket no hook judged: accepted, or connected before the
        // daemon first ran. Its packets are replies, not egress. Its SYN
        // is not: a socket made in a selected cgroup and connected from
        // outside every selected one (the descriptor handed over, its
        // process moved out) is judged below by the socket's cgroup.
        return Ok(PASS);
    }
    let memo = memo_of(slot, word, owner, socket_cgroup);
    if memo.selected_cgroup_id == 0 {
        if established {
            // SAFETY: as above.
            unsafe { (*state).config_word = word };
        }
        return Ok(PASS);
    }
    if !DECIDE && state.is_null() && !full.is_null() && l4 == IPPROTO_TCP {
        // The SYN of a socket no hook judged (made in a selected cgroup,
        // connected outside every selected one; the branch above passed
        // any other TCP socket without state). It gets the state a hook
        // would have given it, under no word, so its later packets take
        // their verdict from the flow this SYN's decision files, and are
        // judged and counted as any connection's, by the process that
        // connected it. (Here, not in `egress_decide`: there it is 42%
        // more for the verifier to walk.)
        let made = SockState {
            config_word: NO_WORD,
            cgroup_id: socket_cgroup,
            addr,
            port,
            protocol: l4,
            verdict: Verdict::Allowed as u8,
            tgid: key.tgid,
        };
        // SAFETY: a full socket from the helper; the value is copied in
        // when the storage is made.
        unsafe {
            bpf_sk_storage_get(
                socks(),
                full.cast(),
                core::ptr::addr_of!(made).cast_mut().cast(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
        };
    }
    // SAFETY: the context is the program's __sk_buff.
    let netns = unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast()) };
    let verdict = match FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        Some(f)
            if !DECIDE
                && unsafe {
                    (*f).config_word == word
                        && (*f).names_epoch == memo.names_epoch
                        && (*f).netns == netns
                        && (established || unexpired(&*f))
                } =>
        {
            // SAFETY: as above.
            let verdict = unsafe { (*f).verdict };
            // SAFETY: as above.
            unsafe { add_packet(ctx, &key, f, l4, l4_offset, family, seen_ns()) };
            if established {
                // SAFETY: the socket's own storage; only its packets write it.
                unsafe {
                    (*state).verdict = verdict;
                    (*state).config_word = word;
                }
            }
            if verdict == Verdict::Allowed as u8 && ports && port == monitor_common::dns::PORT {
                dns::note_query(ctx, l4, l4_offset, &addr);
            }
            return Ok(if verdict == Verdict::Denied as u8 {
                REJECT
            } else {
                PASS
            });
        }
        // `egress` hands the decision to `egress_decide` (a tail call: it
        // ends this program, and its answer is the packet's).
        _ if !DECIDE => {
            // SAFETY: the context is the program's.
            unsafe { EGRESS_DECIDE.tail_call(ctx, tail::DECIDE) };
            // Only reached without a decision program in the array: a
            // packet the monitor cannot judge, refused where the cgroup's
            // policy enforces.
            return Ok(if verdict_of(false, &memo.selection) == Verdict::Denied {
                REJECT
            } else {
                PASS
            });
        }
        cached => {
            let now = now_ns();
            let judgement = decide(
                slot,
                &set,
                &memo.selection,
                socket_cgroup,
                netns,
                &addr,
                established,
            );
            let verdict = verdict_of(judgement.decision.allowed, &memo.selection) as u8;
            let attempt = Attempt {
                hook: Hook::Egress,
                family,
                protocol: l4,
                addr,
                port,
            };
            // SAFETY: the skb is the context.
            let uid = unsafe { bpf_get_socket_uid(skb) };
            let origin = Origin {
                cgroup_id: socket_cgroup,
                pid_tgid: u64::from(key.tgid) << 32 | u64::from(key.tgid),
                uid_gid: u64::from(uid),
                comm: [0; 16],
            };
            // SAFETY: plain data, read at once; a packet names the process
            // that connected its socket when that process is still known.
            let exec_ns = unsafe { process::PROCESSES.get(&key.tgid) }.map_or(0, |p| p.exec_ns);
            let outcome = Outcome {
                exec_ns,
                word,
                names_epoch: memo.names_epoch,
                selected_cgroup: memo.selected_cgroup_id,
                selection: &memo.selection,
                generation: set.generation,
                verdict,
                judgement: &judgement,
                now,
                attempt: false,
            };
            // A packet is not an attempt: egress reports only what it
            // refuses or would refuse.
            if file(&key, cached, &attempt, &origin, &outcome) && verdict != Verdict::Allowed as u8
            {
                emit(&attempt, &origin, &outcome);
            }
            verdict
        }
    };
    count_packet(ctx, &key, l4, l4_offset, family);
    if established {
        // SAFETY: as above; only this socket's packets write it.
        unsafe {
            (*state).verdict = verdict;
            (*state).config_word = word;
        }
    }
    if verdict == Verdict::Allowed as u8 && ports && port == monitor_common::dns::PORT {
        dns::note_query(ctx, l4, l4_offset, &addr);
    }
    Ok(if verdict == Verdict::Denied as u8 {
        REJECT
    } else {
        PASS
    })
}

/// IPv6 extension headers the backstop walks to the upper-layer protocol
/// (hop-by-hop options, routing, fragment, destination options,
/// authentication), at most `IPV6_EXT_MAX` of them.
const IPV6_EXT_MAX: u32 = 4;

/// The upper-layer protocol of an IPv6 packet, and whether extension
/// headers came first. A longer chain is judged as the header it stops at.
#[inline(always)]
fn ipv6_upper_layer(ctx: &SkBuffContext) -> Result<(u8, bool), i32> {
    let mut next: u8 = ctx.load(6).map_err(|_| PASS)?;
    let mut offset: usize = 40;
    let mut i = 0;
    while i < IPV6_EXT_MAX {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            break;
        }
        // Each starts with the next header and its length.
        let h: [u8; 2] = ctx.load(offset).map_err(|_| PASS)?;
        let step = match next {
            44 => 8,
            // Authentication: (len + 2) * 4.
            51 => (usize::from(h[1]) + 2) * 4,
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            _ => (usize::from(h[1]) + 1) * 8,
        };
        next = h[0];
        offset = (offset + step) & 0x7fff;
        i += 1;
    }
    Ok((next, i > 0))
}

/// The packet's socket as a full socket, or null (none, or a request or
/// time-wait socket).
#[inline(always)]
fn full_sock(skb: *mut __sk_buff) -> *mut bpf_sock {
    // SAFETY: the context's socket pointer, checked by the helper.
    unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return core::ptr::null_mut();
        }
        bpf_sk_fullsock(sk)
    }
}

/// The socket-local state of a full socket (`full_sock`), or null.
#[inline(always)]
fn storage_of(full: *mut bpf_sock) -> *mut SockState {
    if full.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: a full socket from the helper, as the sk_storage helper takes it.
    unsafe { bpf_sk_storage_get(socks(), full.cast(), core::ptr::null_mut(), 0).cast() }
}

/// Whether a full socket (`full_sock`) is a TCP connect waiting for its
/// answer: its packet is the connect's SYN (or its retransmission).
#[inline(always)]
fn connecting(full: *mut bpf_sock) -> bool {
    // SAFETY: a full socket from the helper; `state` is readable in it.
    !full.is_null() && unsafe { (*full).state } == TCP_SYN_SENT
}

/// Adds a packet and its transport payload bytes (what the receiving
/// application gets; TCP retransmissions count again) to its flow.
#[inline(always)]
fn count_packet(ctx: &SkBuffContext, key: &FlowKey, l4: u8, l4_offset: usize, family: u8) {
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        unsafe { add_packet(ctx, key, f, l4, l4_offset, family, seen_ns()) };
    }
}

/// `count_packet` into an entry already at hand, seen at `seen` (`seen_ns`).
///
/// # Safety
/// `f` points into FLOWS' value for this run.
#[inline(always)]
unsafe fn add_packet(
    ctx: &SkBuffContext,
    key: &FlowKey,
    f: *mut FlowEntry,
    l4: u8,
    l4_offset: usize,
    family: u8,
    seen: u64,
) {
    let skb = ctx.skb.skb;
    // SAFETY: the context.
    let (len, segs) = unsafe { ((*skb).len, (*skb).gso_segs) };
    let header = if l4 == IPPROTO_UDP {
        l4_offset as u32 + 8
    } else if l4 == IPPROTO_TCP {
        let doff: u8 = ctx.load(l4_offset + 12).unwrap_or(0x50);
        l4_offset as u32 + u32::from(doff >> 4) * 4
    } else if family == AF_INET6 {
        40
    } else {
        l4_offset as u32
    };
    // A GSO packet is several on the wire; it carries its headers once.
    let segs = if segs == 0 { 1 } else { segs };
    let payload = len.saturating_sub(header);
    // SAFETY: a pointer into the map's value; aligned u64 fields.
    unsafe {
        atomic_add(core::ptr::addr_of_mut!((*f).packets), u64::from(segs));
        atomic_add(core::ptr::addr_of_mut!((*f).bytes), u64::from(payload));
        note_seen(f, seen);
        touched(key, f);
    }
}

/// Packet sockets (AF_PACKET) send below IP, past every cgroup hook (the
/// cgroup sock_create hook only sees inet sockets): this LSM hook refuses
/// to create them for tasks in an enforcing cgroup; monitor mode reports.
/// Kernel-internal sockets are not ours to judge.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let previous: i32 = ctx.arg(4);
    // Another LSM refused already: keep its answer.
    if previous != 0 {
        return previous;
    }
    if family != i32::from(AF_PACKET) || kern != 0 {
        return 0;
    }
    let Some((slot, set, word)) = in_force() else {
        return 0;
    };
    let cgroup = Owner::Task.cgroup();
    let memo = memo_of(slot, word, Owner::Task, cgroup);
    if memo.selected_cgroup_id == 0 {
        return 0;
    }
    let verdict = verdict_of(false, &memo.selection);
    // The protocol is an ethertype in network order.
    let attempt = Attempt {
        hook: Hook::SockCreate,
        family: AF_PACKET,
        protocol: (u16::from_be(protocol as u16) & 0xff) as u8,
        addr: [0; 16],
        port: 0,
    };
    let origin = Origin::task(cgroup);
    let judgement = Judgement {
        decision: Decision {
            allowed: false,
            rule: Rule::Socket as u8,
        },
        region: Region::default(),
        source: CountrySource::Geoip,
        cloud_region: 0,
        name_hash: 0,
        name_expires_ns: 0,
        netns: 0,
    };
    emit(
        &attempt,
        &origin,
        &Outcome {
            word,
            names_epoch: memo.names_epoch,
            selected_cgroup: memo.selected_cgroup_id,
            selection: &memo.selection,
            generation: set.generation,
            verdict: verdict as u8,
            judgement: &judgement,
            now: now_ns(),
            attempt: true,
            exec_ns: process::identify(
                (origin.pid_tgid >> 32) as u32,
                origin.cgroup_id,
                &origin.comm,
                verdict as u8,
            ),
        },
    );
    if verdict == Verdict::Denied {
        -EPERM
    } else {
        0
    }
}

const EPERM: i32 = 1;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
