//! Names in the kernel: the DNS queries selected cgroups send (noted by the
//! egress program) and the answers they receive (read by the ingress
//! program before the socket sees them), so a connect made the moment the
//! resolver returns is judged with the name.
//!
//! An answer is read only when it answers a query this cgroup sent: the
//! same socket (its cookie), the same message id, from the address the
//! query went to, as a unicast packet (`PACKET_HOST`) to the address the
//! query came from, about the name asked. Every A and AAAA record of its
//! answer section is filed under (cgroup, network namespace, address) with
//! the question's hashes (see `monitor_common::dns`) until its TTL
//! (clamped) plus the grace period; a name counts only in the namespace
//! that received it. An AAAA record holding an IPv4-mapped address is not
//! filed: it would vouch for the IPv4 address.
//! Names are never followed: the owner names of records are skipped, not
//! decoded, so compression pointers cannot loop here; a pointer that does
//! not point back into the message makes the answer malformed. The daemon gets a copy
//! of each answer it learned from, to name what the kernel filed by hash.
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_loop,
        bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray},
    programs::SkBuffContext,
    EbpfContext,
};
use monitor_common::{
    dns, kind, limits, DnsEvent, DnsTuning, EventHeader, NameEntry, NameKey, Query, QueryKey,
    DNS_VERSION, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::EVENTS;

#[map]
pub static NAMES: LruHashMap<NameKey, NameEntry> =
    LruHashMap::with_max_entries(limits::NAME_ENTRIES, 0);
#[map]
static DNS_QUERIES: LruHashMap<QueryKey, Query> =
    LruHashMap::with_max_entries(limits::QUERY_ENTRIES, 0);
#[map]
static DNS_TUNING: Array<DnsTuning> = Array::with_max_entries(1, 0);
#[map]
static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(dns::stat::COUNT, 0);
#[map]
static DNS_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// The resolvers whose answers teach names, as prefixes (IPv4 mapped).
#[map]
static DNS_RESOLVERS: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(dns::RESOLVER_ENTRIES, 1);

const MASK: usize = dns::PAYLOAD - 1;
const _: () = assert!(dns::PAYLOAD.is_power_of_two());
/// `Scratch::err` when nothing went wrong.
const NO_ERROR: u32 = u32::MAX;

/// The message being read and where the reading stands. One per CPU: a
/// program runs to its end on one CPU.
#[repr(C)]
pub struct Scratch {
    event: DnsEvent,
    labels: [u64; dns::MAX_LABELS],
    entry: NameEntry,
    cgroup_id: u64,
    netns: u64,
    now: u64,
    /// Bytes of `event.payload` that hold the message.
    len: u32,
    /// The whole message's length (may exceed `len`).
    full_len: u32,
    pos: u32,
    labels_seen: u32,
    /// Bytes left of the label being hashed (0: a length byte is next).
    remaining: u32,
    done: u32,
    err: u32,
    answers: u32,
    learned: u32,
    min_ttl_s: u32,
    grace_s: u32,
    max_ttl_s: u32,
    label_hash: u64,
    /// The node's name-hash key (`DnsTuning::key`).
    key: u64,
}

#[inline(always)]
fn count(stat: u32) {
    if let Some(v) = DNS_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn tuning() -> Option<DnsTuning> {
    let t = DNS_TUNING.get(0).copied()?;
    (t.flags & dns::TUNING_ENABLED != 0).then_some(t)
}

#[inline(always)]
fn loopback(addr: &[u8; 16]) -> bool {
    let v4_mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    (v4_mapped && addr[12] == 127) || (addr[..15] == [0; 15] && addr[15] == 1)
}

#[inline(always)]
fn be16(buf: &[u8; dns::PAYLOAD], at: u32) -> u32 {
    let at = at as usize;
    (u32::from(buf[at & MASK]) << 8) | u32::from(buf[(at + 1) & MASK])
}

/// Where the DNS message of a port-53 packet starts and how long it is,
/// for UDP and TCP (whose message follows a two-byte length); `None` when
/// the packet carries none (a bare ACK) or is not port 53 on `port_at`.
#[inline(always)]
fn message(ctx: &SkBuffContext, protocol: u8, l4: usize, port_at: usize) -> Option<(u32, u32)> {
    let port: u16 = ctx.load(l4 + port_at).ok()?;
    if u16::from_be(port) != dns::PORT {
        return None;
    }
    let skb_len = ctx.len();
    if protocol == IPPROTO_UDP {
        let off = (l4 + 8) as u32;
        (skb_len > off).then(|| (off, skb_len - off))
    } else {
        let doff: u8 = ctx.load(l4 + 12).ok()?;
        let payload = (l4 + usize::from(doff >> 4) * 4) as u32;
        if skb_len < payload + 2 + 12 {
            return None;
        }
        let prefix: u16 = ctx.load(payload as usize).ok()?;
        let off = payload + 2;
        let in_segment = skb_len - off;
        let len = u32::from(u16::from_be(prefix));
        if len > in_segment {
            // The message goes on in the next segment: not read.
            count(dns::stat::SPLIT);
            return None;
        }
        Some((off, len))
    }
}

/// Copies up to `PAYLOAD` bytes of the message into the scratch space.
#[inline(always)]
fn copy_in(ctx: &SkBuffContext, sc: &mut Scratch, off: u32, full_len: u32) -> bool {
    let len = if full_len > dns::PAYLOAD as u32 {
        dns::PAYLOAD as u32
    } else {
        full_len
    };
    if len < 12 {
        return false;
    }
    sc.len = len;
    sc.full_len = full_len;
    // The verifier needs the length bounded: masked to the buffer's size.
    let n = len & (2 * dns::PAYLOAD as u32 - 1);
    if n == 0 || n > dns::PAYLOAD as u32 {
        return false;
    }
    // SAFETY: the buffer is PAYLOAD bytes of a map value; n <= PAYLOAD.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            off,
            sc.event.payload.as_mut_ptr() as *mut _,
            n,
        )
    };
    r == 0
}

/// One byte of the question name (called by `bpf_loop`, at most 256
/// times): hashes labels into `labels`, stops at the root label.
extern "C" fn qname_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: ctx is the caller's stack slot holding the scratch pointer.
    let sc = unsafe { &mut **(ctx as *mut *mut Scratch) };
    if sc.pos >= sc.len {
        sc.err = dns::stat::MALFORMED;
        return 1;
    }
    let b = sc.event.payload[sc.pos as usize & MASK];
    sc.pos += 1;
    if sc.remaining == 0 {
        if b == 0 {
            sc.done = 1;
            return 1;
        }
        // No compression in a question's name; labels of at most 63.
        if b > 63 {
            sc.err = dns::stat::MALFORMED;
            return 1;
        }
        if sc.labels_seen as usize >= dns::MAX_LABELS {
            sc.err = dns::stat::NAME_TOO_LONG;
            return 1;
        }
        sc.remaining = u32::from(b);
        sc.label_hash = dns::FNV_OFFSET ^ sc.key;
        return 0;
    }
    sc.label_hash = dns::label_step(sc.label_hash, b);
    sc.remaining -= 1;
    if sc.remaining == 0 {
        sc.labels[sc.labels_seen as usize & (dns::MAX_LABELS - 1)] = sc.label_hash;
        sc.labels_seen += 1;
    }
    0
}

/// Reads the question (one name, type, class) at offset 12 and leaves its
/// hashes in `sc.entry`.
#[inline(always)]
fn read_question(sc: &mut Scratch, key: u64) -> bool {
    sc.key = key;
    sc.pos = 12;
    sc.labels_seen = 0;
    sc.remaining = 0;
    sc.done = 0;
    sc.err = NO_ERROR;
    let mut ptr: *mut Scratch = sc;
    // SAFETY: the callback reads the scratch through the pointer on our
    // stack; bpf_loop calls it at most 256 times.
    unsafe {
        bpf_loop(
            256,
            qname_step as *mut _,
            (&mut ptr as *mut *mut Scratch) as *mut _,
            0,
        )
    };
    if sc.err != NO_ERROR || sc.done == 0 || sc.labels_seen == 0 {
        if sc.err != NO_ERROR {
            count(sc.err);
        } else {
            count(dns::stat::MALFORMED);
        }
        return false;
    }
    let hashes = dns::fold_labels(&sc.labels, sc.labels_seen as usize, key);
    sc.entry.name_hash = hashes.full;
    sc.entry.suffixes = hashes.suffixes;
    sc.entry.suffix_count = hashes.suffix_count;
    // QTYPE and QCLASS.
    sc.pos += 4;
    sc.pos <= sc.len
}

/// One answer record (called by `bpf_loop`, at most `MAX_ANSWERS` times):
/// skips its owner name, files an A or AAAA record.
extern "C" fn answer_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: as in `qname_step`.
    let sc = unsafe { &mut **(ctx as *mut *mut Scratch) };
    if index >= u64::from(sc.answers) {
        return 1;
    }
    let mut p = sc.pos;
    // The owner name: labels ending in a root label or a pointer.
    let mut k = 0;
    while k < 32 {
        if p >= sc.len {
            break;
        }
        let b = sc.event.payload[p as usize & MASK];
        if b == 0 {
            p += 1;
            break;
        }
        if b & 0xc0 == 0xc0 {
            if p + 1 >= sc.len {
                break;
            }
            // A pointer must point back into the message before the name
            // it ends (what keeps any decoder of this name out of a loop);
            // the message is not read further otherwise.
            let low = u32::from(sc.event.payload[(p as usize + 1) & MASK]);
            let target = (u32::from(b & 0x3f) << 8) | low;
            if target < 12 || target >= sc.pos {
                sc.err = dns::stat::MALFORMED;
                return 1;
            }
            p += 2;
            break;
        }
        if b & 0xc0 != 0 {
            sc.err = dns::stat::MALFORMED;
            return 1;
        }
        p += 1 + u32::from(b);
        k += 1;
    }
    if k == 32 || p + 10 > sc.len {
        sc.err = if sc.full_len > sc.len {
            dns::stat::OVERSIZED
        } else {
            dns::stat::MALFORMED
        };
        return 1;
    }
    let rtype = be16(&sc.event.payload, p);
    let class = be16(&sc.event.payload, p + 2);
    let mut ttl = (be16(&sc.event.payload, p + 4) << 16) | be16(&sc.event.payload, p + 6);
    // RFC 2181: a TTL with the top bit set counts as 0.
    if ttl & 0x8000_0000 != 0 {
        ttl = 0;
    }
    let rdlen = be16(&sc.event.payload, p + 8);
    p += 10;
    if p + rdlen > sc.len {
        sc.err = if sc.full_len > sc.len {
            dns::stat::OVERSIZED
        } else {
            dns::stat::MALFORMED
        };
        return 1;
    }
    let mut addr = [0u8; 16];
    let mut found = false;
    if class != 1 {
        // Not class IN: skipped.
    } else if rtype == 1 && rdlen == 4 {
        let at = p as usize;
        addr = crate::mapped_v4([
            sc.event.payload[at & MASK],
            sc.event.payload[(at + 1) & MASK],
            sc.event.payload[(at + 2) & MASK],
            sc.event.payload[(at + 3) & MASK],
        ]);
        found = true;
    } else if rtype == 28 && rdlen == 16 {
        let mut i = 0;
        while i < 16 {
            addr[i] = sc.event.payload[(p as usize + i) & MASK];
            i += 1;
        }
        // `::ffff:a.b.c.d` is how IPv4 is filed: such a record would vouch
        // for the IPv4 address, which only an A record may.
        if crate::is_mapped_v4(&addr) {
            count(dns::stat::MAPPED);
        } else {
            found = true;
        }
    }
    if found {
        let mut ttl_s = if ttl < sc.min_ttl_s {
            sc.min_ttl_s
        } else {
            ttl
        };
        if ttl_s > sc.max_ttl_s {
            ttl_s = sc.max_ttl_s;
        }
        sc.entry.expires_ns = sc.now + (u64::from(ttl_s) + u64::from(sc.grace_s)) * 1_000_000_000;
        let key = NameKey {
            cgroup_id: sc.cgroup_id,
            netns: sc.netns,
            addr,
        };
        // SAFETY: plain data, read at once.
        let known = unsafe { NAMES.get(&key) }.map_or(0, |e| e.name_hash);
        if NAMES.insert(&key, &sc.entry, 0).is_ok() {
            sc.learned += 1;
            count(dns::stat::LEARNED);
            // A new name for the address: the cgroup's cached decisions
            // are made again with it (a refresh of the same name is not).
            if known != sc.entry.name_hash {
                crate::names_changed(sc.cgroup_id);
            }
        }
    }
    sc.pos = p + rdlen;
    0
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU value, ours for the length of this run.
    DNS_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Egress: a packet to port 53 of an allowed resolver from a selected
/// cgroup. Notes the query (port, id, resolver, name) so its answer is read.
#[inline(always)]
pub fn note_query(ctx: &SkBuffContext, protocol: u8, l4: usize, resolver: &[u8; 16]) {
    let Some(tuning) = tuning() else {
        return;
    };
    // SAFETY: the context is the program's __sk_buff.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if loopback(resolver)
        && (tuning.flags & dns::TUNING_TRUST_LOOPBACK == 0 || netns != tuning.netns)
    {
        // Every namespace has a loopback of its own, and anyone in it can
        // answer there: only the daemon's namespace's stub is trusted.
        if message(ctx, protocol, l4, 2).is_some() {
            count(dns::stat::UNTRUSTED_RESOLVER);
        }
        return;
    }
    if DNS_RESOLVERS.get(&Key::new(128, *resolver)).is_none() {
        // Not a resolver the operator named: an allowed address running a
        // DNS server of the workload's own must not vouch for names.
        if message(ctx, protocol, l4, 2).is_some() {
            count(dns::stat::UNTRUSTED_RESOLVER);
        }
        return;
    }
    // Destination port at offset 2 of both headers.
    let Some((off, len)) = message(ctx, protocol, l4, 2) else {
        return;
    };
    let Ok(sport) = ctx.load::<u16>(l4) else {
        return;
    };
    let Some(local) = source(ctx) else {
        return;
    };
    let Some(sc) = scratch() else {
        return;
    };
    if !copy_in(ctx, sc, off, len) {
        return;
    }
    // A query: QR clear, one question.
    if sc.event.payload[2] & 0x80 != 0 || be16(&sc.event.payload, 4) != 1 {
        return;
    }
    if !read_question(sc, tuning.key) {
        return;
    }
    let key = QueryKey {
        // SAFETY: the context is the program's __sk_buff.
        socket: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        port: u16::from_be(sport),
        id: be16(&sc.event.payload, 0) as u16,
        protocol,
        _pad: [0; 3],
    };
    let query = Query {
        resolver: *resolver,
        local,
        // SAFETY: plain helper call.
        sent_ns: unsafe { bpf_ktime_get_boot_ns() },
        name_hash: sc.entry.name_hash,
        netns,
    };
    if DNS_QUERIES.insert(&key, &query, 0).is_ok() {
        count(dns::stat::QUERIES);
    }
}

/// Ingress: every packet a socket under the cgroup root receives passes
/// here; only answers from port 53 are read. Always passes the packet.
#[inline(always)]
pub fn learn(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    // A socket of a cgroup no policy selects has no query to match (they
    // are noted for selected cgroups only): it ends here. An answer that
    // arrives just after a switch unselected its cgroup teaches nothing;
    // its cgroup has no policy to use the name.
    if crate::quiet_now(crate::Owner::Skb(skb)) {
        return;
    }
    // SAFETY: the context is the program's __sk_buff.
    let eth_proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    // Every received packet of a selected cgroup comes here, and nearly
    // all end at the source port: before it, one read of the IPv4 header
    // (addresses included) or of the IPv6 next header, and the port's;
    // the IPv6 addresses are read after it.
    let mut v4 = [0u8; 20];
    let (protocol, l4) = if eth_proto == crate::ETH_P_IP {
        let Ok(h) = ctx.load::<[u8; 20]>(0) else {
            return;
        };
        v4 = h;
        (h[9], usize::from(h[0] & 0x0f) * 4)
    } else if eth_proto == crate::ETH_P_IPV6 {
        let Ok(next) = ctx.load::<u8>(6) else { return };
        (next, 40)
    } else {
        return;
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return;
    }
    // Source port 53 at offset 0 of both headers.
    let Some((off, len)) = message(ctx, protocol, l4, 0) else {
        return;
    };
    let (src, dst) = if eth_proto == crate::ETH_P_IP {
        (
            crate::mapped_v4([v4[12], v4[13], v4[14], v4[15]]),
            crate::mapped_v4([v4[16], v4[17], v4[18], v4[19]]),
        )
    } else {
        let Ok(a) = ctx.load::<[[u8; 16]; 2]>(8) else {
            return;
        };
        (a[0], a[1])
    };
    let Some(tuning) = tuning() else {
        return;
    };
    let Ok(dport) = ctx.load::<u16>(l4 + 2) else {
        return;
    };
    let Ok(id) = ctx.load::<u16>(off as usize) else {
        return;
    };
    // SAFETY: the skb is the context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let key = QueryKey {
        // SAFETY: the context is the program's __sk_buff; at ingress its
        // socket is the receiving one.
        socket: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        port: u16::from_be(dport),
        id: u16::from_be(id),
        protocol,
        _pad: [0; 3],
    };
    // SAFETY: value copied out at once.
    let Some(query) = (unsafe { DNS_QUERIES.get(&key) }).copied() else {
        // Counted for selected cgroups only: answers to everyone else are
        // none of our business.
        if crate::selected(crate::Owner::Skb(skb)) {
            count(dns::stat::UNSOLICITED);
        }
        return;
    };
    if query.resolver != src {
        count(dns::stat::UNSOLICITED);
        return;
    }
    // SAFETY: the context is the program's __sk_buff.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // A resolver answers the query's own source address, unicast: a
    // broadcast or multicast answer, or one looped back from a local raw
    // socket (PACKET_LOOPBACK, with the real interface as its device), is
    // forged by someone on this host. On loopback, only a loopback
    // resolver answers: anything else claiming a remote resolver's address
    // there was sent by a local raw socket.
    // SAFETY: the context is the program's __sk_buff.
    let (pkt_type, ifindex) = unsafe { ((*skb).pkt_type, (*skb).ingress_ifindex) };
    if pkt_type != PACKET_HOST
        || dst != query.local
        || netns != query.netns
        || (ifindex == LOOPBACK_IFINDEX && !loopback(&src))
    {
        count(dns::stat::SPOOFED);
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(query.sent_ns) > dns::QUERY_TIMEOUT_NS {
        let _ = DNS_QUERIES.remove(&key);
        count(dns::stat::LATE);
        return;
    }
    let Some(sc) = scratch() else {
        return;
    };
    if !copy_in(ctx, sc, off, len) {
        count(dns::stat::MALFORMED);
        return;
    }
    let flags = be16(&sc.event.payload, 2);
    if flags & 0x8000 == 0 || be16(&sc.event.payload, 4) != 1 {
        count(dns::stat::MALFORMED);
        return;
    }
    if flags & 0x0200 != 0 {
        count(dns::stat::TRUNCATED);
    }
    // NXDOMAIN and other failures: nothing to learn.
    if flags & 0x000f != 0 {
        return;
    }
    if !read_question(sc, tuning.key) {
        return;
    }
    if sc.entry.name_hash != query.name_hash {
        // The query stays noted: the real answer may still come.
        count(dns::stat::WRONG_NAME);
        return;
    }
    // One answer per query: a second one (forged, or a duplicate) is not
    // read.
    let _ = DNS_QUERIES.remove(&key);
    count(dns::stat::ANSWERS);
    sc.answers = be16(&sc.event.payload, 6);
    if sc.answers > dns::MAX_ANSWERS {
        sc.answers = dns::MAX_ANSWERS;
    }
    sc.learned = 0;
    sc.err = NO_ERROR;
    sc.cgroup_id = cgroup_id;
    sc.netns = netns;
    sc.now = now;
    sc.min_ttl_s = tuning.min_ttl_s;
    sc.grace_s = tuning.grace_s;
    sc.max_ttl_s = tuning.max_ttl_s;
    let mut ptr: *mut Scratch = sc;
    // SAFETY: as in `read_question`.
    unsafe {
        bpf_loop(
            dns::MAX_ANSWERS,
            answer_step as *mut _,
            (&mut ptr as *mut *mut Scratch) as *mut _,
            0,
        )
    };
    if sc.err != NO_ERROR {
        count(sc.err);
    }
    if sc.learned == 0 {
        return;
    }
    sc.event.header = EventHeader {
        kind: kind::DNS,
        version: DNS_VERSION,
        len: core::mem::size_of::<DnsEvent>() as u32,
    };
    sc.event.boot_ns = sc.now;
    sc.event.cgroup_id = cgroup_id;
    sc.event.name_hash = sc.entry.name_hash;
    sc.event.resolver = src;
    sc.event.learned = sc.learned as u16;
    sc.event.payload_len = sc.len as u16;
    sc.event.protocol = protocol;
    sc.event._pad = [0; 3];
    // Names are not refusals: kept out of the ring's reserve.
    if !crate::below_reserve(crate::ring_used())
        || EVENTS
            .output::<DnsEvent>(&sc.event, u64::from(BPF_RB_NO_WAKEUP))
            .is_err()
    {
        count(dns::stat::UNREPORTED);
    }
}

/// The ifindex of loopback in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// `__sk_buff::pkt_type` of a packet addressed to this host (unicast).
const PACKET_HOST: u32 = 0;

/// The source address of an outgoing IP packet (IPv4 mapped).
#[inline(always)]
fn source(ctx: &SkBuffContext) -> Option<[u8; 16]> {
    // SAFETY: the context is the program's __sk_buff.
    let eth_proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    if eth_proto == crate::ETH_P_IP {
        Some(crate::mapped_v4(ctx.load::<[u8; 4]>(12).ok()?))
    } else if eth_proto == crate::ETH_P_IPV6 {
        ctx.load::<[u8; 16]>(8).ok()
    } else {
        None
    }
}

/// The name this cgroup resolved the address from in network namespace
/// `netns`, while it counts; with `established`, also after it expired (a
/// socket judged before keeps its name when a policy change re-judges it),
/// as long as the LRU keeps it.
#[inline(always)]
pub fn name_of(
    cgroup_id: u64,
    netns: u64,
    addr: &[u8; 16],
    established: bool,
) -> Option<&'static NameEntry> {
    let key = NameKey {
        cgroup_id,
        netns,
        addr: *addr,
    };
    // SAFETY: a reference into the map's value; the caller reads the hashes
    // within this run (an LRU reuse meanwhile costs one wrong re-judge at
    // worst, never a read out of bounds).
    let entry = unsafe { NAMES.get(&key) }?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    (established || entry.expires_ns > now).then_some(entry)
}
