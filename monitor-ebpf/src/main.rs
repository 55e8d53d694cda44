//! Kernel side of egress-monitor: four cgroup sock_addr hooks that judge
//! every outbound connect and unconnected send against the policy of the
//! caller's cgroup, from maps only.
//!
//! Everything that can change at run time lives in two slots of maps. The
//! daemon fills the idle slot and then flips one word in `CONFIG`, so a
//! decision always reads one whole policy set (see `Config`).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use monitor_common::{
    action, hook, kind, limits, mode, rule, verdict, CidrRule, Config, DecisionEvent, EventHeader,
    Meta, PolicyAddr, Region, RegionKey, RegionRule, Selection, AF_INET, AF_INET6,
    DECISION_VERSION,
};

/// Return values of a cgroup sock_addr program.
const PASS: i32 = 1;
const REJECT: i32 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(limits::DEFAULT_RING_BYTES, 0);
/// Events that found the ring buffer full, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

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

/// One policy set: the maps of one slot.
struct Slot {
    select: &'static HashMap<u64, Selection>,
    region_rules: &'static HashMap<RegionKey, RegionRule>,
    allow: &'static LpmTrie<PolicyAddr, CidrRule>,
    deny: &'static LpmTrie<PolicyAddr, CidrRule>,
}

static SLOT_A: Slot = Slot {
    select: &SELECT_A,
    region_rules: &REGION_RULES_A,
    allow: &ALLOW_CIDRS_A,
    deny: &DENY_CIDRS_A,
};
static SLOT_B: Slot = Slot {
    select: &SELECT_B,
    region_rules: &REGION_RULES_B,
    allow: &ALLOW_CIDRS_B,
    deny: &DENY_CIDRS_B,
};

/// What the hook saw.
struct Attempt {
    hook: u8,
    family: u8,
    protocol: u8,
    /// Network order; IPv4 as `::ffff:a.b.c.d`.
    addr: [u8; 16],
    /// Host order.
    port: u16,
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, hook::CONNECT4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, hook::SENDMSG6)
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let ip4 = sa.user_ip4.to_ne_bytes();
    // A sendmsg without a destination (connected UDP with ancillary data)
    // reaches this hook with an unspecified address: the connected peer was
    // judged by the connect hook, so there is nothing new to decide.
    if hook == hook::SENDMSG4 && ip4 == [0; 4] {
        return PASS;
    }
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = ip4[0];
    addr[13] = ip4[1];
    addr[14] = ip4[2];
    addr[15] = ip4[3];
    let attempt = Attempt {
        hook,
        family: AF_INET,
        protocol: sa.protocol as u8,
        addr,
        port: u16::from_be(sa.user_port as u16),
    };
    judge(&attempt)
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
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
    if hook == hook::SENDMSG6 && addr == [0; 16] {
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
    judge(&attempt)
}

#[inline(always)]
fn judge(attempt: &Attempt) -> i32 {
    // Fail open when the config entry cannot be read: an array map always
    // has its entry, so this is unreachable in practice, and failing closed
    // here would cut off every process on the host, selected or not.
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let slot = if config.policy_slot == 0 {
        &SLOT_A
    } else {
        &SLOT_B
    };
    let geo_slot = config.geo_slot;
    let generation = config.policy_generation;

    let Some((selected_cgroup, selection)) = find_selection(slot) else {
        // Not in any selected subtree: untouched, and not reported.
        return PASS;
    };

    let (allowed, rule, region) = decide(slot, geo_slot, selection.policy_id, &attempt.addr);
    let verdict = if allowed {
        verdict::ALLOWED
    } else if selection.mode == mode::ENFORCE {
        verdict::DENIED
    } else {
        verdict::WOULD_DENY
    };
    emit(
        attempt,
        selected_cgroup,
        &selection,
        generation,
        verdict,
        rule,
        region,
    );
    if verdict == verdict::DENIED {
        REJECT
    } else {
        PASS
    }
}

/// The selection of the caller's cgroup or its nearest selected ancestor.
#[inline(always)]
fn find_selection(slot: &Slot) -> Option<(u64, Selection)> {
    // SAFETY: helper calls without arguments that touch memory.
    let current = unsafe { bpf_get_current_cgroup_id() };
    if let Some(sel) = unsafe { slot.select.get(&current) } {
        return Some((current, *sel));
    }
    // Walk from the root down; the deepest selected ancestor wins.
    let mut found: Option<(u64, Selection)> = None;
    let mut level: i32 = 0;
    while level < limits::MAX_CGROUP_DEPTH as i32 {
        // SAFETY: plain helper call.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == current {
            break;
        }
        // SAFETY: values are plain data, copied out at once.
        if let Some(sel) = unsafe { slot.select.get(&id) } {
            found = Some((id, *sel));
        }
        level += 1;
    }
    found
}

/// Deny beats allow; whatever is not allowed is denied.
#[inline(always)]
fn decide(slot: &Slot, geo_slot: u32, policy_id: u32, addr: &[u8; 16]) -> (bool, u8, Region) {
    let key = Key::new(
        32 + 128,
        PolicyAddr {
            policy_id_be: policy_id.to_be_bytes(),
            addr: *addr,
        },
    );
    let geo_key = Key::new(128, *addr);
    let geo = if geo_slot == 0 { &GEO_A } else { &GEO_B };
    let region = geo.get(&geo_key).copied().unwrap_or_default();

    if slot.deny.get(&key).is_some() {
        return (false, rule::CIDR, region);
    }
    let region_key = RegionKey { policy_id, region };
    // SAFETY: value copied out at once.
    let region_rule = unsafe { slot.region_rules.get(&region_key) }.copied();
    if let Some(r) = region_rule {
        if r.action == action::DENY {
            return (false, r.rule, region);
        }
    }
    if slot.allow.get(&key).is_some() {
        return (true, rule::CIDR, region);
    }
    if let Some(r) = region_rule {
        if r.action == action::ALLOW {
            return (true, r.rule, region);
        }
    }
    (false, rule::DEFAULT, region)
}

#[inline(always)]
fn emit(
    attempt: &Attempt,
    selected_cgroup: u64,
    selection: &Selection,
    generation: u32,
    verdict: u8,
    rule: u8,
    region: Region,
) {
    let Some(mut entry) = EVENTS.reserve::<DecisionEvent>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe { *lost += 1 };
        }
        return;
    };
    // SAFETY: plain helper calls.
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = DecisionEvent {
        header: EventHeader {
            kind: kind::DECISION,
            version: DECISION_VERSION,
            len: core::mem::size_of::<DecisionEvent>() as u32,
        },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        selected_cgroup_id: selected_cgroup,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        policy_id: selection.policy_id,
        policy_generation: generation,
        dst_addr: attempt.addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        dst_port: attempt.port,
        country: region.country,
        continent: region.continent,
        hook: attempt.hook,
        family: attempt.family,
        protocol: attempt.protocol,
        verdict,
        rule,
        mode: selection.mode,
        _pad: [0; 4],
    };
    entry.write(event);
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
