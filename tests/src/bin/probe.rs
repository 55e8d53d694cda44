//! A test workload: makes one connection attempt and prints the outcome as
//! JSON, or serves TCP and UDP (inside a test namespace) for a bounded time.
//!
//! probe tcp ADDR PORT
//! probe udp ADDR PORT                     unconnected sendto
//! probe udp-pktinfo ADDR PORT             connect, then sendmsg without a
//!                                         destination but with IP(V6)_PKTINFO
//! probe udp-burst ADDR PORT COUNT [SPREAD]  COUNT unconnected sends, paced,
//!                                         over SPREAD ports from PORT up
//! probe tcp-loop ADDR PORT COUNT GAP_MS  COUNT connects, GAP_MS apart; prints
//!                                         how many succeeded and failed
//! probe sendmsg|sendmmsg ADDR PORT        unconnected UDP through sendmsg(2) /
//!                                         sendmmsg(2) (two datagrams)
//! probe connected-sendto OK_ADDR ADDR PORT  UDP connected to OK_ADDR, then
//!                                         sendto(ADDR)
//! probe tfo ADDR PORT                     TCP Fast Open: sendto(MSG_FASTOPEN)
//! probe uring-connect|uring-sendmsg ADDR PORT   the same through io_uring
//! probe raw ADDR | ping ADDR              ICMP echo from a raw / ping socket
//! probe packet                            create an AF_PACKET socket
//! probe stream tcp|udp ADDR PORT SECONDS  connect, then send every 50 ms;
//!                                         prints "connected" first
//! probe handoff ADDR PORT OTHER_PROCS     a child moved into the cgroup of
//!                                         OTHER_PROCS creates a TCP socket and
//!                                         passes it over SCM_RIGHTS; we connect it
//! probe handoff-when ADDR PORT OTHER_PROCS READY GO   the same; once we hold
//!                                         the socket we create READY, and we
//!                                         connect when GO exists (20 s at most)
//! probe unshare ADDR PORT                 connect from a new network namespace
//! probe serve PORT SECONDS                TCP accept + UDP receive on [::],
//!                                         on 16 ports from PORT up
//! probe sink PORT SECONDS                 count what arrives; print totals
//! probe spray COUNT SIZE PORT ADDR...     unconnected UDP, round robin
//! probe tcp-send ADDR PORT BYTES          one connection, BYTES written
//! probe udp-moved ADDR PORT PROCS MS     connect a UDP socket here, move
//!                                         this process into the cgroup of
//!                                         PROCS, then send on it for MS
//!                                         milliseconds; prints the counts
//! probe udp-passed ADDR PORT PROCS MS    a child moved into the cgroup of
//!                                         PROCS connects a UDP socket and
//!                                         passes it over SCM_RIGHTS; we send
//!                                         on it for MS milliseconds
//! probe hammer PORT MS ADDR...            for MS milliseconds, a TCP connect
//!                                         and a UDP send to each ADDR in
//!                                         turn, as fast as they go; prints
//!                                         what the client saw
use std::{
    io::Write,
    mem::size_of,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

fn report(result: std::io::Result<()>) {
    let line = match result {
        Ok(()) => serde_json::json!({"result": "ok", "pid": std::process::id()}),
        Err(e) => serde_json::json!({
            "result": "error",
            "errno": e.raw_os_error().unwrap_or(-1),
            "message": e.to_string(),
            "pid": std::process::id(),
        }),
    };
    println!("{line}");
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    }
}

/// connect(), then sendmsg() with no name and a PKTINFO control message:
/// the kernel then runs the sendmsg hook with no destination address.
fn udp_pktinfo(addr: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(unspecified_for(&addr))?;
    sock.connect(addr)?;
    let payload = b"pktinfo";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    // SAFETY: building one control message in a zeroed, large enough buffer.
    unsafe {
        let (level, kind, len) = match addr.ip() {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        msg.msg_controllen = libc::CMSG_SPACE(len as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as usize;
        // A zeroed pktinfo: no source or interface override.
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed storage is a valid sockaddr_storage; we fill one variant.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn check(rc: isize) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn family(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn socket(domain: i32, ty: i32, proto: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A one-buffer message to `name`; the pointers stay valid as long as
/// `name` and `iov` do.
fn named_msg(
    name: &mut libc::sockaddr_storage,
    len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::msghdr {
    // SAFETY: a zeroed msghdr is valid; it is then pointed at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

fn udp_sendmsg(addr: SocketAddr, count: usize) -> std::io::Result<()> {
    let sock = socket(family(&addr), libc::SOCK_DGRAM, 0)?;
    let (mut name, len) = sockaddr(addr);
    let payload = b"sendmsg";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let msg = named_msg(&mut name, len, &mut iov);
    if count == 1 {
        // SAFETY: valid fd and message.
        return check(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) });
    }
    let mut msgs = [
        libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        },
        libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        },
    ];
    // SAFETY: two valid messages.
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) };
    check(n as isize)
}

fn connected_sendto(ok: SocketAddr, addr: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(unspecified_for(&ok))?;
    sock.connect(ok)?;
    sock.send(b"allowed first")?;
    sock.send_to(b"then elsewhere", addr).map(drop)
}

fn tfo(addr: SocketAddr) -> std::io::Result<()> {
    let sock = socket(family(&addr), libc::SOCK_STREAM, 0)?;
    let (name, len) = sockaddr(addr);
    let payload = b"GET / HTTP/1.0\r\n\r\n";
    // SAFETY: valid fd, buffer and address.
    check(unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_FASTOPEN,
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
}

fn uring(addr: SocketAddr, connect: bool) -> std::io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    let ty = if connect {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let sock = socket(family(&addr), ty, 0)?;
    let (mut name, len) = sockaddr(addr);
    let payload = b"uring";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let msg = named_msg(&mut name, len, &mut iov);
    let mut ring = IoUring::new(4)?;
    let fd = types::Fd(sock.as_raw_fd());
    let entry = if connect {
        opcode::Connect::new(fd, (&name as *const libc::sockaddr_storage).cast(), len).build()
    } else {
        opcode::SendMsg::new(fd, &msg).build()
    };
    // SAFETY: every buffer the entry points at outlives the submission.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

fn icmp_echo(addr: IpAddr, raw: bool) -> std::io::Result<()> {
    let (domain, proto) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let ty = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let sock = socket(domain, ty, proto)?;
    // Echo request, checksum filled for IPv4 (the kernel does it for v6
    // and for ping sockets).
    let kind = if addr.is_ipv4() { 8u8 } else { 128u8 };
    let mut packet = [kind, 0, 0, 0, 0x12, 0x34, 0, 1, b'e', b'm'];
    if addr.is_ipv4() {
        let mut sum: u32 = 0;
        for pair in packet.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        packet[2..4].copy_from_slice(&c.to_be_bytes());
    }
    send_echo(&sock, &packet, addr)
}

/// An ICMPv6 echo request from a raw socket, carrying a hop-by-hop and a
/// destination-options header (as an MLD report carries hop-by-hop).
fn icmp6_with_extension_headers(addr: IpAddr) -> std::io::Result<()> {
    const IPV6_HOPOPTS: libc::c_int = 54;
    const IPV6_DSTOPTS: libc::c_int = 59;
    let sock = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    // Next header (filled by the kernel), length 0 (8 bytes), PadN of 4.
    let options = [0u8, 0, 1, 4, 0, 0, 0, 0];
    for opt in [IPV6_HOPOPTS, IPV6_DSTOPTS] {
        // SAFETY: a valid fd and option buffer.
        check(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IPV6,
                opt,
                options.as_ptr().cast(),
                options.len() as libc::socklen_t,
            )
        } as isize)?;
    }
    send_echo(&sock, &[128u8, 0, 0, 0, 0x12, 0x35, 0, 1, b'e', b'x'], addr)
}

/// One datagram from `sock` to `addr` (port 0: ICMP has none).
fn send_echo(sock: &std::os::fd::OwnedFd, packet: &[u8], addr: IpAddr) -> std::io::Result<()> {
    let (name, len) = sockaddr(SocketAddr::new(addr, 0));
    // SAFETY: valid fd, buffer and address.
    check(unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
}

fn stream(tcp: bool, addr: SocketAddr, seconds: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut sent, mut failed, mut last_error) = (0u64, 0u64, String::new());
    let mut errnos: Vec<i32> = Vec::new();
    let mut send: Box<dyn FnMut() -> std::io::Result<usize>> = if tcp {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                return serde_json::json!({"result": "error", "message": e.to_string(), "pid": std::process::id()})
            }
        };
        Box::new(move || s.write(b"tick\n"))
    } else {
        let s = UdpSocket::bind(unspecified_for(&addr)).and_then(|s| s.connect(addr).map(|()| s));
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                return serde_json::json!({"result": "error", "message": e.to_string(), "pid": std::process::id()})
            }
        };
        Box::new(move || s.send(b"tick\n"))
    };
    println!(
        "{}",
        serde_json::json!({"connected": true, "pid": std::process::id()})
    );
    let _ = std::io::stdout().flush();
    while Instant::now() < deadline {
        match send() {
            Ok(_) => sent += 1,
            Err(e) => {
                failed += 1;
                last_error = e.to_string();
                if let Some(n) = e.raw_os_error() {
                    if !errnos.contains(&n) {
                        errnos.push(n);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    serde_json::json!({"result": "ok", "pid": std::process::id(), "sent": sent, "failed": failed, "last_error": last_error, "errnos": errnos})
}

/// A child in another cgroup creates the socket and hands it over.
fn handoff(addr: SocketAddr, other_procs: &str) -> std::io::Result<()> {
    let sock = made_by_helper(other_procs, || socket(family(&addr), libc::SOCK_STREAM, 0))?;
    connect_within(&sock, addr, Duration::from_secs(2))
}

/// `handoff`, with a pause between the socket's making and its connect:
/// once it holds the socket it creates `ready`, then connects when `go`
/// exists (at most 20 s after).
fn handoff_when(addr: SocketAddr, other_procs: &str, ready: &str, go: &str) -> std::io::Result<()> {
    let sock = made_by_helper(other_procs, || socket(family(&addr), libc::SOCK_STREAM, 0))?;
    std::fs::write(ready, b"")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(go).exists() {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{go} did not appear within 20 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    connect_within(&sock, addr, Duration::from_secs(2))
}

/// A socket `make` makes in a forked helper moved into the cgroup of
/// `other_procs`, passed back to this process over SCM_RIGHTS.
fn made_by_helper(
    other_procs: &str,
    make: impl FnOnce() -> std::io::Result<std::os::fd::OwnedFd>,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut pair = [0i32; 2];
    // SAFETY: plain syscall into a two-element array.
    check(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) }
            as isize,
    )?;
    // SAFETY: fork in a single-threaded process; the child only makes
    // syscalls and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: the child's copy of the parent's end.
        unsafe { libc::close(pair[0]) };
        let code = (|| -> std::io::Result<()> {
            std::fs::write(other_procs, b"0")?;
            let sock = make()?;
            send_fd(pair[1], sock.as_raw_fd())
        })()
        .map_or(1, |()| 0);
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the parent's copy of the child's end: once the child exits,
    // a receive ends instead of waiting forever.
    unsafe { libc::close(pair[1]) };
    let fd = recv_fd(pair[0]);
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    // SAFETY: a descriptor we just received and own.
    fd.map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sends on a connected UDP socket for `run` (at most 5,000,000 tries);
/// prints what was sent and refused.
fn send_for(sock: &UdpSocket, run: Duration) {
    let (mut sent, mut eperm, mut other) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + run;
    while Instant::now() < deadline && sent + eperm + other < 5_000_000 {
        match sock.send(b"moved") {
            Ok(_) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => other += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({"result": "ok", "pid": std::process::id(),
            "sent": sent, "udp_eperm": eperm, "other": other})
    );
}

/// connect(2) that gives up after `timeout` (a dropped SYN is retried by
/// the kernel for minutes).
fn connect_within(
    sock: &std::os::fd::OwnedFd,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    let (name, len) = sockaddr(addr);
    // SAFETY: valid fd and address.
    let rc = unsafe { libc::connect(fd, (&name as *const libc::sockaddr_storage).cast(), len) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(err);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
    }
    let mut so_error: i32 = 0;
    let mut l = size_of::<i32>() as libc::socklen_t;
    // SAFETY: reading an int socket option.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut so_error as *mut i32).cast(),
            &mut l,
        )
    };
    if so_error != 0 {
        return Err(std::io::Error::from_raw_os_error(so_error));
    }
    Ok(())
}

fn send_fd(over: i32, fd: i32) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut buf = [0u64; 4];
    // SAFETY: one SCM_RIGHTS control message in a zeroed buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        check(libc::sendmsg(over, &msg, 0))
    }
}

fn recv_fd(over: i32) -> std::io::Result<i32> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut buf = [0u64; 4];
    // SAFETY: receiving into live buffers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&buf);
        check(libc::recvmsg(over, &mut msg, 0))?;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(std::io::Error::other("no descriptor received"));
        }
        Ok(std::ptr::read(libc::CMSG_DATA(cmsg).cast::<i32>()))
    }
}

/// Ports `serve` listens on, from its port up.
const SERVE_PORTS: u16 = 16;

/// Counts what arrives on a port (TCP and UDP) for SECONDS, then prints
/// the totals: datagrams and their bytes, connections and their bytes.
fn sink(port: u16, seconds: u64) -> std::io::Result<()> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tcp = TcpListener::bind(("::", port))?;
    tcp.set_nonblocking(true)?;
    let udp = UdpSocket::bind(("::", port))?;
    udp.set_nonblocking(true)?;
    // Room for a burst: the sender does not wait for us.
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid option value for the socket.
    unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    println!("{}", serde_json::json!({"sinking": port}));
    std::io::stdout().flush()?;
    let (mut datagrams, mut udp_bytes, mut accepted, mut tcp_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut streams: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        let mut idle = true;
        while let Ok((n, _)) = udp.recv_from(&mut buf) {
            datagrams += 1;
            udp_bytes += n as u64;
            idle = false;
        }
        while let Ok((s, _)) = tcp.accept() {
            s.set_nonblocking(true)?;
            streams.push(s);
            accepted += 1;
            idle = false;
        }
        for s in &mut streams {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tcp_bytes += n as u64;
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!(
        "{}",
        serde_json::json!({"datagrams": datagrams, "udp_bytes": udp_bytes, "accepted": accepted, "tcp_bytes": tcp_bytes})
    );
    Ok(())
}

fn serve(port: u16, seconds: u64) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // SERVE_PORTS ports from `port` up: a test can reach the same host as
    // a new destination (a first decision) several times.
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for p in port..port + SERVE_PORTS {
        let l = TcpListener::bind(("::", p))?;
        l.set_nonblocking(true)?;
        tcp.push(l);
        let u = UdpSocket::bind(("::", p))?;
        u.set_nonblocking(true)?;
        udp.push(u);
    }
    // Every ICMP echo request that arrives, from raw sockets of our own.
    let icmp4 = socket(
        libc::AF_INET,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::IPPROTO_ICMP,
    )?;
    let icmp6 = socket(
        libc::AF_INET6,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::IPPROTO_ICMPV6,
    )?;
    println!("{}", serde_json::json!({"serving": port}));
    std::io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    let mut streams: Vec<(TcpStream, String)> = Vec::new();
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u64;
    while Instant::now() < deadline {
        let mut idle = true;
        for l in &tcp {
            while let Ok((stream, peer)) = l.accept() {
                stream.set_nonblocking(true)?;
                let from = peer.ip().to_string();
                println!("{}", serde_json::json!({"accepted": from, "ms": ms()}));
                streams.push((stream, from));
                idle = false;
            }
        }
        for (stream, from) in &mut streams {
            use std::io::Read;
            if let Ok(n) = stream.read(&mut buf) {
                if n > 0 {
                    println!(
                        "{}",
                        serde_json::json!({"data": n, "from": from, "ms": ms()})
                    );
                }
            }
        }
        for (sock, v4) in [(&icmp4, true), (&icmp6, false)] {
            // SAFETY: zeroed storage for the sender's address.
            let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: reading into live buffers.
            let n = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_storage).cast(),
                    &mut from_len,
                )
            };
            if n > 0 {
                // IPv4 raw sockets see the IP header; the ICMP type follows it.
                let kind = if v4 {
                    buf.get(((buf[0] & 0x0f) as usize) * 4).copied()
                } else {
                    buf.first().copied()
                };
                let source = if v4 {
                    // SAFETY: an AF_INET socket fills a sockaddr_in.
                    let sin: libc::sockaddr_in =
                        unsafe { std::ptr::read((&from as *const libc::sockaddr_storage).cast()) };
                    IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()).to_string()
                } else {
                    // SAFETY: an AF_INET6 socket fills a sockaddr_in6.
                    let sin6: libc::sockaddr_in6 =
                        unsafe { std::ptr::read((&from as *const libc::sockaddr_storage).cast()) };
                    IpAddr::from(sin6.sin6_addr.s6_addr).to_string()
                };
                if kind == Some(8) || kind == Some(128) {
                    println!(
                        "{}",
                        serde_json::json!({"echo_request": n, "from": source, "ms": ms()})
                    );
                }
            }
        }
        for u in &udp {
            while let Ok((n, peer)) = u.recv_from(&mut buf) {
                println!(
                    "{}",
                    serde_json::json!({"datagram": n, "from": peer.ip().to_string(), "ms": ms()})
                );
                idle = false;
            }
        }
        std::io::stdout().flush()?;
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = || -> SocketAddr {
        let ip: IpAddr = args[1].parse().expect("address");
        SocketAddr::new(ip, args[2].parse().expect("port"))
    };
    match args.first().map(String::as_str) {
        Some("tcp") => {
            report(TcpStream::connect_timeout(&target(), Duration::from_secs(3)).map(drop))
        }
        Some("udp") => {
            let addr = target();
            report(
                UdpSocket::bind(unspecified_for(&addr))
                    .and_then(|s| s.send_to(b"probe", addr))
                    .map(drop),
            )
        }
        Some("udp-pktinfo") => report(udp_pktinfo(target())),
        Some("sendmsg") => report(udp_sendmsg(target(), 1)),
        Some("sendmmsg") => report(udp_sendmsg(target(), 2)),
        Some("connected-sendto") => {
            let ok = SocketAddr::new(
                args[1].parse().expect("address"),
                args[3].parse().expect("port"),
            );
            let bad = SocketAddr::new(
                args[2].parse().expect("address"),
                args[3].parse().expect("port"),
            );
            report(connected_sendto(ok, bad))
        }
        Some("tfo") => report(tfo(target())),
        Some("uring-connect") => report(uring(target(), true)),
        Some("uring-sendmsg") => report(uring(target(), false)),
        Some("raw") => report(icmp_echo(args[1].parse().expect("address"), true)),
        Some("raw6-ext") => report(icmp6_with_extension_headers(
            args[1].parse().expect("address"),
        )),
        Some("ping") => report(icmp_echo(args[1].parse().expect("address"), false)),
        Some("packet") => report(socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map(drop)),
        Some("stream") => {
            let addr = SocketAddr::new(
                args[2].parse().expect("address"),
                args[3].parse().expect("port"),
            );
            println!(
                "{}",
                stream(args[1] == "tcp", addr, args[4].parse().expect("seconds"))
            );
        }
        Some("handoff") => report(handoff(target(), &args[3])),
        // handoff-when ADDR PORT OTHER_PROCS READY GO
        Some("handoff-when") => report(handoff_when(target(), &args[3], &args[4], &args[5])),
        Some("unshare") => {
            // SAFETY: plain syscall; this process then lives in a fresh
            // network namespace with nothing but a down loopback.
            let r = check(unsafe { libc::unshare(libc::CLONE_NEWNET) } as isize);
            report(r.and_then(|()| {
                TcpStream::connect_timeout(&target(), Duration::from_secs(2)).map(drop)
            }))
        }
        Some("connect-many") => {
            // connect-many PORT ADDR...: one TCP connect each (1 s), the
            // errno of each; for judging many addresses from a dead-end
            // namespace, where an allowed connect fails with EINVAL.
            let port: u16 = args[1].parse().expect("port");
            let results: Vec<serde_json::Value> = args[2..]
                .iter()
                .map(|a| {
                    let ip: IpAddr = a.parse().expect("address");
                    let r = TcpStream::connect_timeout(
                        &SocketAddr::new(ip, port),
                        Duration::from_secs(1),
                    );
                    let errno = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
                    serde_json::json!({"addr": a, "errno": errno})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"result": "ok", "pid": std::process::id(), "results": results})
            );
        }
        Some("tcp-loop") => {
            let addr = target();
            let count: usize = args[3].parse().expect("count");
            let gap = Duration::from_millis(args[4].parse().expect("gap ms"));
            let (mut ok, mut eperm, mut other) = (0u64, 0u64, 0u64);
            for _ in 0..count {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => ok += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                    Err(_) => other += 1,
                }
                std::thread::sleep(gap);
            }
            println!(
                "{}",
                serde_json::json!({"result": "ok", "pid": std::process::id(), "connected": ok, "eperm": eperm, "other": other})
            );
        }
        Some("udp-moved") => {
            let addr = target();
            let procs = &args[3];
            let run = Duration::from_millis(args[4].parse().expect("milliseconds"));
            let sock = UdpSocket::bind(unspecified_for(&addr)).expect("udp socket");
            sock.connect(addr).expect("connect where we are");
            std::fs::write(procs, std::process::id().to_string()).expect("move into PROCS");
            println!("{}", serde_json::json!({"moved": procs}));
            let _ = std::io::stdout().flush();
            send_for(&sock, run);
        }
        Some("udp-passed") => {
            let addr = target();
            let procs = &args[3];
            let run = Duration::from_millis(args[4].parse().expect("milliseconds"));
            let sock = made_by_helper(procs, || {
                let sock = UdpSocket::bind(unspecified_for(&addr))?;
                sock.connect(addr)?;
                Ok(sock.into())
            })
            .expect("a connected UDP socket from the helper");
            println!("{}", serde_json::json!({"passed from": procs}));
            let _ = std::io::stdout().flush();
            send_for(&UdpSocket::from(sock), run);
        }
        Some("hammer") => {
            let port: u16 = args[1].parse().expect("port");
            let run = Duration::from_millis(args[2].parse().expect("milliseconds"));
            let dests: Vec<SocketAddr> = args[3..]
                .iter()
                .map(|a| SocketAddr::new(a.parse().expect("address"), port))
                .collect();
            println!("{}", serde_json::json!({"hammering": dests.len()}));
            let _ = std::io::stdout().flush();
            let udp4 = UdpSocket::bind("0.0.0.0:0").expect("udp4 socket");
            let udp6 = UdpSocket::bind("[::]:0").expect("udp6 socket");
            let (mut tcp, mut connected, mut tcp_eperm) = (0u64, 0u64, 0u64);
            let (mut udp, mut sent, mut udp_eperm, mut other) = (0u64, 0u64, 0u64, 0u64);
            let deadline = Instant::now() + run;
            // Bounded in time and in count.
            while Instant::now() < deadline && tcp < 2_000_000 {
                for to in &dests {
                    tcp += 1;
                    match TcpStream::connect_timeout(to, Duration::from_millis(500)) {
                        Ok(_) => connected += 1,
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => tcp_eperm += 1,
                        Err(_) => other += 1,
                    }
                    udp += 1;
                    let s = if to.is_ipv4() { &udp4 } else { &udp6 };
                    match s.send_to(b"hammer", to) {
                        Ok(_) => sent += 1,
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => udp_eperm += 1,
                        Err(_) => other += 1,
                    }
                }
            }
            println!(
                "{}",
                serde_json::json!({"result": "ok", "pid": std::process::id(),
                    "tcp": tcp, "connected": connected, "tcp_eperm": tcp_eperm,
                    "udp": udp, "sent": sent, "udp_eperm": udp_eperm, "other": other})
            );
        }
        Some("udp-burst") => {
            let addr = target();
            let count: usize = args[3].parse().expect("count");
            // Optional: spread over this many ports from PORT up, so each
            // send is a destination of its own (a first decision each).
            let spread: u16 = args.get(4).map_or(1, |a| a.parse().expect("spread"));
            let result = UdpSocket::bind(unspecified_for(&addr)).and_then(|s| {
                for i in 0..count {
                    let mut to = addr;
                    to.set_port(addr.port() + (i % usize::from(spread.max(1))) as u16);
                    s.send_to(b"burst", to)?;
                    // About 50,000 a second: a flood, but one a reading
                    // client keeps up with.
                    if i % 100 == 99 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(())
            });
            report(result)
        }
        Some("sink") => {
            if let Err(e) = sink(
                args[1].parse().expect("port"),
                args[2].parse().expect("seconds"),
            ) {
                eprintln!("sink: {e}");
                std::process::exit(1);
            }
        }
        Some("spray") => {
            // spray COUNT SIZE PORT ADDR...: COUNT unconnected UDP sends of
            // SIZE bytes from one socket, round robin over the addresses.
            let count: usize = args[1].parse().expect("count");
            let size: usize = args[2].parse().expect("size");
            let port: u16 = args[3].parse().expect("port");
            let dests: Vec<SocketAddr> = args[4..]
                .iter()
                .map(|a| SocketAddr::new(a.parse().expect("address"), port))
                .collect();
            let payload = vec![0x5a; size];
            let result = UdpSocket::bind("[::]:0").and_then(|s| {
                let mut sent = 0u64;
                for i in 0..count {
                    s.send_to(&payload, dests[i % dests.len()])?;
                    sent += 1;
                    // Paced: about 50,000 a second, which the sink keeps up with.
                    if i % 100 == 99 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(sent)
            });
            match result {
                Ok(sent) => println!(
                    "{}",
                    serde_json::json!({"result": "ok", "pid": std::process::id(), "sent": sent})
                ),
                Err(e) => report(Err(e)),
            }
        }
        Some("tcp-send") => {
            // tcp-send ADDR PORT BYTES: one connection, BYTES written.
            let bytes: usize = args[3].parse().expect("bytes");
            report(
                TcpStream::connect_timeout(&target(), Duration::from_secs(3)).and_then(|mut s| {
                    s.write_all(&vec![0x5a; bytes])?;
                    s.flush()
                }),
            )
        }
        Some("serve") => {
            if let Err(e) = serve(
                args[1].parse().expect("port"),
                args[2].parse().expect("seconds"),
            ) {
                eprintln!("serve: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: probe tcp|udp|udp-pktinfo ADDR PORT | probe serve PORT SECONDS");
            std::process::exit(2);
        }
    }
}
