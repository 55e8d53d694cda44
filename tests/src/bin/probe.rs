//! A test workload: makes one connection attempt and prints the outcome as
//! JSON, or serves TCP and UDP (inside a test namespace) for a bounded time.
//!
//! probe tcp ADDR PORT
//! probe udp ADDR PORT                     unconnected sendto
//! probe udp-pktinfo ADDR PORT             connect, then sendmsg without a
//!                                         destination but with IP(V6)_PKTINFO
//! probe udp-burst ADDR PORT COUNT        COUNT unconnected sends, paced
//! probe tcp-loop ADDR PORT COUNT GAP_MS  COUNT connects, GAP_MS apart; prints
//!                                         how many succeeded and failed
//! probe serve PORT SECONDS                TCP accept + UDP receive on [::]
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

fn serve(port: u16, seconds: u64) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tcp = TcpListener::bind(("::", port))?;
    let udp = UdpSocket::bind(("::", port))?;
    tcp.set_nonblocking(true)?;
    udp.set_read_timeout(Some(Duration::from_millis(20)))?;
    println!("{}", serde_json::json!({"serving": port}));
    std::io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        while let Ok((_stream, peer)) = tcp.accept() {
            println!("{}", serde_json::json!({"accepted": peer.ip().to_string()}));
        }
        if let Ok((n, peer)) = udp.recv_from(&mut buf) {
            println!(
                "{}",
                serde_json::json!({"datagram": n, "from": peer.ip().to_string()})
            );
        }
        std::io::stdout().flush()?;
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
        Some("udp-burst") => {
            let addr = target();
            let count: usize = args[3].parse().expect("count");
            let result = UdpSocket::bind(unspecified_for(&addr)).and_then(|s| {
                for i in 0..count {
                    s.send_to(b"burst", addr)?;
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
