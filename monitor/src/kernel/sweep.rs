//! Connections older than the policy: when a policy set takes effect, the
//! TCP and connected UDP sockets of the selected cgroups are found (the
//! kernel's socket diagnostics, `NETLINK_SOCK_DIAG`, in every network
//! namespace a process of those cgroups lives in), each is judged by the
//! kernel program `judge_socket` with the maps in force (the same decision
//! as a new connect), and those the set denies are destroyed
//! (`SOCK_DESTROY`: the application's next call fails with ECONNABORTED)
//! where the policy enforces; under `monitor` they are only reported.
//!
//! Accepted (inbound) connections are left alone: a TCP socket whose local
//! port has a listener in its namespace is taken for one.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use monitor_common::{SweepSocket, Verdict, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// Every TCP state of a connection that can still send: established,
/// SYN sent, FIN wait 1/2, close wait, last ack, closing.
const TCP_SENDING: u32 =
    (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);
/// Sockets looked at per namespace and protocol, at most.
const MAX_SOCKETS: usize = 1 << 20;
/// Processes read per cgroup to find the namespaces, at most: a budget
/// per cgroup, so one busy workload cannot use up another's sweep.
const MAX_PROCESSES_PER_CGROUP: usize = 65_536;

/// One socket the diagnostics reported.
#[derive(Debug, Clone)]
pub struct Found {
    pub family: u8,
    pub protocol: u8,
    /// The raw `inet_diag_sockid`, to name the socket to SOCK_DESTROY.
    id: [u8; 48],
    pub local_port: u16,
    pub port: u16,
    /// Network order, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    pub uid: u32,
    pub cgroup_id: u64,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub namespaces: usize,
    /// Sockets of selected cgroups judged.
    pub judged: usize,
    /// Taken for accepted connections and left alone.
    pub inbound: usize,
    pub destroyed: usize,
    /// Denied by a monitor policy: reported, left.
    pub reported: usize,
    /// Denied, but the kernel could not destroy them (gone already, or
    /// SOCK_DESTROY missing).
    pub failed: usize,
}

fn nl_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The cookie of the network namespace `fd` lives in (SO_NETNS_COOKIE):
/// how the kernel programs tell namespaces apart.
pub fn netns_cookie(fd: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: reading a u64 socket option into a u64.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the calling thread's network namespace.
pub fn this_netns_cookie() -> std::io::Result<u64> {
    netns_cookie(&nl_socket()?)
}

/// nlmsghdr + inet_diag_req_v2.
fn request(kind: u16, flags: u16, family: u8, protocol: u8, states: u32, id: &[u8; 48]) -> Vec<u8> {
    let len = 16 + 56;
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(1u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend([family, protocol, 0, 0]);
    m.extend(states.to_ne_bytes());
    m.extend(id);
    m
}

fn send(fd: &OwnedFd, msg: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid buffer of msg.len() bytes; the kernel address is
    // the zeroed sockaddr_nl (the kernel itself).
    let rc = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: a valid writable buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Every socket of `family`/`protocol` in `states`, in the calling
/// thread's network namespace.
fn dump(family: u8, protocol: u8, states: u32) -> std::io::Result<Vec<Found>> {
    let fd = nl_socket()?;
    send(
        &fd,
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            protocol,
            states,
            &[0; 48],
        ),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = recv(&fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off) as usize;
            let kind = u16_at(&buf, off + 4);
            if len < 16 || off + len > n {
                return Err(std::io::Error::other("a truncated sock_diag message"));
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    let m = &buf[off + 16..off + len];
                    if out.len() < MAX_SOCKETS {
                        out.push(parse(m, protocol));
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// inet_diag_msg and its attributes.
fn parse(m: &[u8], protocol: u8) -> Found {
    let family = m[0];
    let mut id = [0u8; 48];
    id.copy_from_slice(&m[4..52]);
    let local_port = u16::from_be_bytes([id[0], id[1]]);
    let port = u16::from_be_bytes([id[2], id[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&id[20..24]);
    } else {
        addr.copy_from_slice(&id[20..36]);
    }
    let uid = u32_at(m, 64);
    let mut cgroup_id = 0;
    let mut a = 72;
    while a + 4 <= m.len() {
        let alen = usize::from(u16_at(m, a));
        let kind = u16_at(m, a + 2) & 0x3fff;
        if alen < 4 || a + alen > m.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && alen >= 12 {
            cgroup_id = u64::from_ne_bytes(m[a + 4..a + 12].try_into().unwrap_or_default());
        }
        a += (alen + 3) & !3;
    }
    Found {
        family,
        protocol,
        id,
        local_port,
        port,
        addr,
        uid,
        cgroup_id,
    }
}

/// Destroys one socket (in the calling thread's namespace).
fn destroy(s: &Found) -> std::io::Result<()> {
    let fd = nl_socket()?;
    send(
        &fd,
        &request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            s.family,
            s.protocol,
            u32::MAX,
            &s.id,
        ),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(&fd, &mut buf)?;
    if n >= 20 && u16_at(&buf, 4) == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(-errno));
        }
    }
    Ok(())
}

/// The sockets that can still send, the listening ports, and the cookie
/// of the calling thread's namespace.
fn sockets_here() -> std::io::Result<(Vec<Found>, BTreeSet<u16>, u64)> {
    let mut found = Vec::new();
    let mut listening = BTreeSet::new();
    for family in [AF_INET, AF_INET6] {
        found.extend(dump(family, IPPROTO_TCP, TCP_SENDING)?);
        // A connected UDP socket is in TCP_ESTABLISHED.
        found.extend(dump(family, IPPROTO_UDP, 1 << TCP_ESTABLISHED)?);
        for l in dump(family, IPPROTO_TCP, 1 << TCP_LISTEN)? {
            listening.insert(l.local_port);
        }
    }
    Ok((found, listening, this_netns_cookie()?))
}

/// Runs `f` in the network namespace of `pid` (a thread of its own, which
/// ends with it).
fn in_netns<T: Send>(
    pid: u32,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with a namespace fd.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sweep thread panicked")))
    })
}

/// For every cgroup in the selected subtrees (by id): its path under the
/// mount and its nearest selected ancestor (or itself). One walk.
pub fn selected_subtrees(mount: &Path, selected: &[(String, u64)]) -> BTreeMap<u64, (String, u64)> {
    let mut by_depth: Vec<&(String, u64)> = selected.iter().collect();
    by_depth.sort_by_key(|(p, _)| p.matches('/').count());
    let mut map = BTreeMap::new();
    for (path, id) in by_depth {
        let dir = mount.join(path.trim_start_matches('/'));
        if let Ok(tree) = crate::cgroups::walk(mount, &dir) {
            // Deeper selections come later and win: the nearest ancestor.
            for (rel, c) in tree {
                map.insert(c, (rel, *id));
            }
        }
    }
    map
}

/// One process per network namespace of the processes in `cgroups`.
fn namespaces(mount: &Path, cgroups: &BTreeMap<u64, (String, u64)>, also: &[String]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut seen: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for rel in cgroups.values().map(|(rel, _)| rel).chain(also) {
        let procs = mount.join(rel.trim_start_matches('/')).join("cgroup.procs");
        let Ok(text) = std::fs::read_to_string(procs) else {
            continue;
        };
        let pids = text.lines().filter_map(|l| l.trim().parse::<u32>().ok());
        for pid in pids.take(MAX_PROCESSES_PER_CGROUP) {
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                seen.entry((m.dev(), m.ino())).or_insert(pid);
            }
        }
    }
    seen.into_values().collect()
}

/// The sweep: `judge` asks the kernel about one socket and returns its
/// verdict (0 for not selected), `selected` lists the selected cgroups as
/// (path under the mount, id). The sockets are looked for in the network
/// namespaces of the processes of the selected cgroups and of the cgroups
/// `also` names (a socket of a selected cgroup used by a process outside
/// it lives where that process does).
pub fn sweep(
    mount: &Path,
    selected: &[(String, u64)],
    also: &[String],
    judge: &dyn Fn(&SweepSocket) -> std::io::Result<u8>,
) -> std::io::Result<Swept> {
    let mut swept = Swept::default();
    if selected.is_empty() {
        return Ok(swept);
    }
    let cgroups = selected_subtrees(mount, selected);
    for pid in namespaces(mount, &cgroups, also) {
        let (found, listening, netns) = match in_netns(pid, sockets_here) {
            Ok(x) => x,
            // The process left, with its namespace: nothing to judge there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        swept.namespaces += 1;
        let mut doomed = Vec::new();
        for s in found {
            let Some(&(_, selected_cgroup_id)) = cgroups.get(&s.cgroup_id) else {
                continue;
            };
            if s.protocol == IPPROTO_TCP && listening.contains(&s.local_port) {
                swept.inbound += 1;
                continue;
            }
            swept.judged += 1;
            let verdict = judge(&SweepSocket {
                cgroup_id: s.cgroup_id,
                selected_cgroup_id,
                uid: s.uid,
                port: s.port,
                protocol: s.protocol,
                family: s.family,
                addr: s.addr,
                netns,
            })?;
            if verdict == Verdict::Denied as u8 {
                doomed.push(s);
            } else if verdict == Verdict::WouldDeny as u8 {
                swept.reported += 1;
            }
        }
        if doomed.is_empty() {
            continue;
        }
        let results = in_netns(pid, || Ok(doomed.iter().map(destroy).collect::<Vec<_>>()))?;
        for (s, r) in doomed.iter().zip(results) {
            match r {
                Ok(()) => swept.destroyed += 1,
                Err(e) => {
                    swept.failed += 1;
                    log::warn!(
                        "could not destroy a denied socket to {}:{} (cgroup id {}): {e}",
                        crate::geo::from_u128(u128::from_be_bytes(s.addr)),
                        s.port,
                        s.cgroup_id
                    );
                }
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// A cgroup with more processes than the budget (here: pids that do
    /// not exist, as a busy workload's exited ones) does not use up the
    /// sweep of the cgroups after it: the last cgroup's process (this
    /// test's own) is found.
    #[test]
    fn one_busy_cgroup_does_not_starve_the_others() {
        let mount = tempfile::tempdir().expect("a temporary directory");
        let mut cgroups = BTreeMap::new();
        for (id, name) in [(1u64, "busy"), (2, "other")] {
            std::fs::create_dir(mount.path().join(name)).unwrap();
            cgroups.insert(id, (format!("/{name}"), id));
        }
        let busy: String = (0..MAX_PROCESSES_PER_CGROUP as u32 + 10)
            .map(|i| format!("{}\n", 4_000_000 + i))
            .collect();
        std::fs::write(mount.path().join("busy/cgroup.procs"), busy).unwrap();
        let me = std::process::id();
        std::fs::write(mount.path().join("other/cgroup.procs"), format!("{me}\n")).unwrap();
        let found = namespaces(mount.path(), &cgroups, &[]);
        assert_eq!(
            found,
            vec![me],
            "the other cgroup's namespace was not looked for"
        );
    }
}
