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

mod dns;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_get_socket_uid,
            bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr, lsm, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{LsmContext, SkBuffContext, SockAddrContext},
    EbpfContext,
};
use monitor_common::{
    kind, limits, Action, CidrRule, CloudEntry, CloudKey, Config, CountrySource, Decision,
    DecisionEvent, DomainKey, EventHeader, Hook, InForce, Judged, Meta, Mode, NameEntry,
    PolicyAddr, Region, RegionKey, RegionRule, Rule, Selection, Verdict, AF_INET, AF_INET6,
    AF_PACKET, DECISION_VERSION, DOMAIN_EXACT, DOMAIN_WILDCARD, IPPROTO_TCP, IPPROTO_UDP,
};

/// Return values of a cgroup sock_addr program.
const PASS: i32 = 1;
const REJECT: i32 = 0;
/// `Judged::verdict` of a socket whose cgroup is not selected.
const UNSELECTED: u8 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(limits::DEFAULT_RING_BYTES, 0);
/// Events that found the ring buffer full, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The last decision per socket (see `Judged`).
#[map]
static JUDGED: LruHashMap<u64, Judged> = LruHashMap::with_max_entries(limits::JUDGED_ENTRIES, 0);

/// Read and written by the daemon only (see `Meta`).
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);

#[map]
static GEO_A: LpmTrie<[u8; 16], Region> = LpmTrie::with_max_entries(limits::GEO_ENTRIES, 0);
#[map]
static GEO_B: LpmTrie<[u8; 16], Region> = LpmTrie::with_max_entries(limits::GEO_ENTRIES, 0);

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

/// One policy set: the maps of one slot.
struct Slot {
    select: &'static HashMap<u64, Selection>,
    region_rules: &'static HashMap<RegionKey, RegionRule>,
    allow: &'static LpmTrie<PolicyAddr, CidrRule>,
    deny: &'static LpmTrie<PolicyAddr, CidrRule>,
    domains: &'static HashMap<DomainKey, RegionRule>,
    cloud_rules: &'static HashMap<CloudKey, RegionRule>,
}

static SLOT_A: Slot = Slot {
    select: &SELECT_A,
    region_rules: &REGION_RULES_A,
    allow: &ALLOW_CIDRS_A,
    deny: &DENY_CIDRS_A,
    domains: &DOMAINS_A,
    cloud_rules: &CLOUD_RULES_A,
};
static SLOT_B: Slot = Slot {
    select: &SELECT_B,
    region_rules: &REGION_RULES_B,
    allow: &ALLOW_CIDRS_B,
    deny: &DENY_CIDRS_B,
    domains: &DOMAINS_B,
    cloud_rules: &CLOUD_RULES_B,
};

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

/// The policy slot in force, the geo slot and the generation, all decoded
/// from one copy of the CONFIG word.
#[inline(always)]
fn in_force() -> Option<(&'static Slot, InForce)> {
    let config = CONFIG.get_ptr(0)?;
    // Exactly one load of the whole word (see `Config` for why a switch is
    // atomic); every field below comes from this copy.
    // SAFETY: the pointer is the array's value, valid and 8-byte aligned.
    let word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*config).word)) };
    let set = Config { word }.unpack();
    let slot = if set.policy_slot == 0 {
        &SLOT_A
    } else {
        &SLOT_B
    };
    Some((slot, set))
}

/// A socket-address hook: judge, report, remember the decision for the
/// egress backstop.
#[inline(always)]
fn judge(ctx: &SockAddrContext, attempt: &Attempt) -> i32 {
    // Fail open when the config entry cannot be read: an array map always
    // has its entry, so this is unreachable in practice, and failing closed
    // here would cut off every process on the host, selected or not.
    let Some((slot, set)) = in_force() else {
        return PASS;
    };
    let generation = set.generation;
    // SAFETY: the context pointer is the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let task_cgroup = Owner::Task.cgroup();
    let Some((selected_cgroup, selection)) = find_selection(slot, Owner::Task) else {
        // Not in any selected subtree: untouched and not reported; the
        // socket is remembered as judged-unselected, so the backstop
        // re-judges it only after a policy change.
        remember(cookie, task_cgroup, generation, UNSELECTED, &attempt.addr);
        return PASS;
    };
    let judgement = decide(slot, &set, &selection, task_cgroup, &attempt.addr, false);
    let verdict = verdict_of(judgement.decision.allowed, &selection);
    remember(
        cookie,
        task_cgroup,
        generation,
        verdict as u8,
        &attempt.addr,
    );
    let origin = Origin::task(task_cgroup);
    emit(
        attempt,
        &origin,
        selected_cgroup,
        &selection,
        generation,
        verdict,
        &judgement,
    );
    if verdict == Verdict::Denied {
        REJECT
    } else {
        PASS
    }
}

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
fn remember(cookie: u64, cgroup_id: u64, generation: u32, verdict: u8, addr: &[u8; 16]) {
    if cookie == 0 {
        return;
    }
    let judged = Judged {
        cgroup_id,
        policy_generation: generation,
        verdict,
        _pad: [0; 3],
        addr: *addr,
    };
    // A full LRU evicts the oldest entry; losing one only costs a re-judge.
    let _ = JUDGED.insert(&cookie, &judged, 0);
}

/// Whether the owner's cgroup is under a selected one (policy in force).
#[inline(always)]
pub(crate) fn selected(owner: Owner) -> bool {
    match in_force() {
        Some((slot, _)) => find_selection(slot, owner).is_some(),
        None => false,
    }
}

/// The selection of the owner's cgroup or its nearest selected ancestor.
#[inline(always)]
fn find_selection(slot: &Slot, owner: Owner) -> Option<(u64, Selection)> {
    let current = owner.cgroup();
    // SAFETY: values are plain data, copied out at once.
    if let Some(sel) = unsafe { slot.select.get(&current) } {
        return Some((current, *sel));
    }
    // Walk from the root down; the deepest selected ancestor wins. (Plain
    // values, not an Option: an Option's payload is left uninitialised
    // while it is None, and the verifier refuses to copy uninitialised
    // registers.)
    let mut found_id: u64 = 0;
    let mut found = Selection::default();
    let mut level: i32 = 0;
    while level < limits::MAX_CGROUP_DEPTH as i32 {
        let id = owner.ancestor(level);
        if id == 0 || id == current {
            break;
        }
        // SAFETY: as above.
        if let Some(sel) = unsafe { slot.select.get(&id) } {
            found_id = id;
            found = *sel;
        }
        level += 1;
    }
    (found_id != 0).then_some((found_id, found))
}

/// What a decision concluded and what it was made from, for the event.
struct Judgement {
    decision: Decision,
    region: Region,
    source: CountrySource,
    cloud_region: u32,
    name_hash: u64,
}

/// Looks up the place (the cloud region's documented location where the
/// provider publishes one, else the country database) and the name this
/// cgroup resolved the address from, and hands the policy's lookups to the
/// shared decision order (`monitor_common::decide`), which calls each only
/// when the ones before it did not decide.
#[inline(always)]
fn decide(
    slot: &Slot,
    set: &InForce,
    selection: &Selection,
    cgroup_id: u64,
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
        let geo = if set.geo_slot == 0 { &GEO_A } else { &GEO_B };
        (
            geo.get(&addr_key).copied().unwrap_or_default(),
            CountrySource::Geoip,
        )
    };
    let name = dns::name_of(cgroup_id, addr, established);
    let name_hash = name.map_or(0, |n| n.name_hash);
    let region_key = RegionKey { policy_id, region };
    let decision = monitor_common::decide(
        || slot.deny.get(&key).is_some(),
        || match name {
            Some(n) if selection.flags & Selection::HAS_DOMAINS != 0 => {
                domain_action(slot, policy_id, n)
            }
            _ => 0,
        },
        || {
            // SAFETY: values copied out at once.
            let by_region = unsafe { slot.region_rules.get(&region_key) }
                .copied()
                .unwrap_or_default();
            let by_cloud = if cloud.region != 0 && selection.flags & Selection::HAS_CLOUD_RULES != 0
            {
                let cloud_key = CloudKey {
                    policy_id,
                    region: cloud.region,
                };
                // SAFETY: as above.
                unsafe { slot.cloud_rules.get(&cloud_key) }
                    .copied()
                    .unwrap_or_default()
            } else {
                RegionRule::default()
            };
            monitor_common::stronger(by_cloud, by_region)
        },
        || slot.allow.get(&key).is_some(),
    );
    Judgement {
        decision,
        region,
        source,
        cloud_region: cloud.region,
        name_hash,
    }
}

/// What the policy's domain rules say of a name: the exact name, then every
/// suffix the name keeps (`*.` rules); a deny anywhere wins. An `Action`
/// byte, 0 when no rule matches.
#[inline(always)]
fn domain_action(slot: &Slot, policy_id: u32, name: &NameEntry) -> u8 {
    let mut allowed = false;
    let exact = DomainKey {
        policy_id,
        kind: DOMAIN_EXACT,
        hash: name.name_hash,
    };
    // SAFETY: value copied out at once.
    if let Some(r) = unsafe { slot.domains.get(&exact) } {
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
        if let Some(r) = unsafe { slot.domains.get(&wildcard) } {
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    attempt: &Attempt,
    origin: &Origin,
    selected_cgroup: u64,
    selection: &Selection,
    generation: u32,
    verdict: Verdict,
    judgement: &Judgement,
) {
    let Some(mut entry) = EVENTS.reserve::<DecisionEvent>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe { *lost += 1 };
        }
        return;
    };
    let event = DecisionEvent {
        header: EventHeader {
            kind: kind::DECISION,
            version: DECISION_VERSION,
            len: core::mem::size_of::<DecisionEvent>() as u32,
        },
        // SAFETY: plain helper call.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: origin.cgroup_id,
        selected_cgroup_id: selected_cgroup,
        pid: origin.pid_tgid as u32,
        tgid: (origin.pid_tgid >> 32) as u32,
        uid: origin.uid_gid as u32,
        gid: (origin.uid_gid >> 32) as u32,
        policy_id: selection.policy_id,
        policy_generation: generation,
        dst_addr: attempt.addr,
        comm: origin.comm,
        dst_port: attempt.port,
        country: judgement.region.country,
        continent: judgement.region.continent,
        hook: attempt.hook as u8,
        family: attempt.family,
        protocol: attempt.protocol,
        verdict: verdict as u8,
        rule: judgement.decision.rule,
        mode: selection.mode,
        cloud_region: judgement.cloud_region,
        name_hash: judgement.name_hash,
        country_source: judgement.source as u8,
        _pad: [0; 7],
    };
    entry.write(event);
    // Wake the daemon only once a batch waits: a wakeup per event is an
    // interrupt charged to the caller (a VM exit on a virtual machine); the
    // daemon also drains on a short timer, so a lone event waits at most
    // that long.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= limits::WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
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
    match judge_packet(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Reads the DNS answers selected cgroups receive (see `dns`); never drops.
#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    dns::learn(&ctx);
    PASS
}

#[inline(always)]
fn judge_packet(ctx: &SkBuffContext) -> Result<i32, i32> {
    let skb = ctx.skb.skb;
    // SAFETY: the context is the program's __sk_buff.
    let eth_proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut addr = [0u8; 16];
    let (family, l4, l4_offset) = if eth_proto == ETH_P_IP {
        let first: u8 = ctx.load(0).map_err(|_| PASS)?;
        let proto: u8 = ctx.load(9).map_err(|_| PASS)?;
        let dst: [u8; 4] = ctx.load(16).map_err(|_| PASS)?;
        addr = mapped_v4(dst);
        (AF_INET, proto, ((first & 0x0f) as usize) * 4)
    } else if eth_proto == ETH_P_IPV6 {
        let next: u8 = ctx.load(6).map_err(|_| PASS)?;
        addr = ctx.load(24).map_err(|_| PASS)?;
        (AF_INET6, next, 40)
    } else {
        return Ok(PASS);
    };
    // SAFETY: the context pointer is the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some((slot, set)) = in_force() else {
        return Ok(PASS);
    };
    let generation = set.generation;
    let owner = Owner::Skb(skb);
    let socket_cgroup = owner.cgroup();
    // SAFETY: value copied out at once.
    let judged = unsafe { JUDGED.get(&cookie) }.copied();
    // Judged before, at this address by this cgroup: only the policy set
    // changed since (an established connection keeps the name it was
    // judged with).
    let established = matches!(judged, Some(j) if j.addr == addr && j.cgroup_id == socket_cgroup);
    match judged {
        Some(j)
            if j.policy_generation == generation
                && j.addr == addr
                && j.cgroup_id == socket_cgroup =>
        {
            if j.verdict == Verdict::Allowed as u8 && (l4 == IPPROTO_UDP || l4 == IPPROTO_TCP) {
                dns::note_query(ctx, socket_cgroup, l4, l4_offset, &addr);
            }
            return Ok(if j.verdict == Verdict::Denied as u8 {
                REJECT
            } else {
                PASS
            });
        }
        Some(_) => {}
        None if l4 == IPPROTO_TCP => return Ok(PASS),
        None => {}
    }
    let Some((selected_cgroup, selection)) = find_selection(slot, owner) else {
        remember(cookie, socket_cgroup, generation, UNSELECTED, &addr);
        return Ok(PASS);
    };
    let judgement = decide(slot, &set, &selection, socket_cgroup, &addr, established);
    let verdict = verdict_of(judgement.decision.allowed, &selection);
    remember(cookie, socket_cgroup, generation, verdict as u8, &addr);
    if verdict == Verdict::Allowed && (l4 == IPPROTO_UDP || l4 == IPPROTO_TCP) {
        dns::note_query(ctx, socket_cgroup, l4, l4_offset, &addr);
    }
    if verdict != Verdict::Allowed {
        let port: u16 = if l4 == IPPROTO_TCP || l4 == IPPROTO_UDP {
            u16::from_be(ctx.load::<u16>(l4_offset + 2).unwrap_or(0))
        } else {
            0
        };
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
            pid_tgid: 0,
            uid_gid: u64::from(uid),
            comm: [0; 16],
        };
        emit(
            &attempt,
            &origin,
            selected_cgroup,
            &selection,
            generation,
            verdict,
            &judgement,
        );
    }
    Ok(if verdict == Verdict::Denied {
        REJECT
    } else {
        PASS
    })
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
    let Some((slot, set)) = in_force() else {
        return 0;
    };
    let Some((selected_cgroup, selection)) = find_selection(slot, Owner::Task) else {
        return 0;
    };
    let verdict = verdict_of(false, &selection);
    // The protocol is an ethertype in network order.
    let attempt = Attempt {
        hook: Hook::SockCreate,
        family: AF_PACKET,
        protocol: (u16::from_be(protocol as u16) & 0xff) as u8,
        addr: [0; 16],
        port: 0,
    };
    let origin = Origin::task(Owner::Task.cgroup());
    emit(
        &attempt,
        &origin,
        selected_cgroup,
        &selection,
        set.generation,
        verdict,
        &Judgement {
            decision: Decision {
                allowed: false,
                rule: Rule::Socket as u8,
            },
            region: Region::default(),
            source: CountrySource::Geoip,
            cloud_region: 0,
            name_hash: 0,
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
