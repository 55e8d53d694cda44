//! Load generator for `cargo xtask bench`: runs one bounded loop of socket
//! operations in the calling process (the bench puts it in the client
//! network namespace and a test cgroup) and prints one JSON line with the
//! operation count, the elapsed time and per-operation latency percentiles.
//!
//! ```text
//! loadgen tcp  ITERS MAX_SECS                 connect + accept + close on 127.0.0.1
//! loadgen udp  ITERS MAX_SECS NDST [RATE] [FIRST]  unconnected sendto, NDST loopback
//!                                             destinations from index FIRST
//! loadgen udp-connect ITERS MAX_SECS        per iteration a new UDP socket,
//!                                             connected to 127.0.0.1, one datagram
//!                                             sent, closed (a resolver's pattern)
//! loadgen forbid ITERS MAX_SECS ADDR PORT RATE  TCP connect and UDP sendto to
//!                                             ADDR:PORT in turn, counting what
//!                                             the kernel refused and what got through
//! ```
//!
//! `tcp` listens on an ephemeral loopback port and, per iteration, times
//! `connect()`, accepts the connection and closes both ends (the client with
//! `SO_LINGER` 0, so no TIME_WAIT piles up). `udp` sends 16-byte datagrams
//! from one unconnected socket to `127.x.y.1:9` + port offsets, rotating over
//! NDST destinations, to a receiver bound on the wildcard address that never
//! reads (the kernel drops what does not fit; the sender does not wait).
//! RATE (datagrams per second, 0 = as fast as possible) paces in 1 ms steps.
//! Every loop stops at ITERS operations or MAX_SECS, whichever comes first.
use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!(
        "usage: loadgen tcp|udp-connect ITERS MAX_SECS | loadgen udp ITERS MAX_SECS NDST [RATE]"
    );
    std::process::exit(2);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

struct Run {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    lat_ns: Vec<u32>,
}

impl Run {
    /// A run of at most `iters` operations; latencies kept for at most
    /// `keep` of them up front (the vector grows past that if it must).
    fn new(iters: u64, keep: u64) -> Self {
        Run {
            ops: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            lat_ns: Vec::with_capacity(iters.min(keep) as usize),
        }
    }

    /// One operation that took `dt`: counted with its latency, or as an
    /// error (the first one kept).
    fn note<T>(&mut self, r: std::io::Result<T>, dt: Duration) {
        match r {
            Ok(_) => {
                self.ops += 1;
                self.lat_ns.push(dt.as_nanos().min(u32::MAX as u128) as u32);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    u64::from(sorted[i])
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn tcp(iters: u64, max: Duration) -> Run {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on 127.0.0.1");
    let addr = listener.local_addr().expect("listener address");
    let mut run = Run::new(iters, 1 << 22);
    let start = Instant::now();
    while run.ops + run.errors < iters && start.elapsed() < max {
        let t0 = Instant::now();
        let c = TcpStream::connect(addr);
        let dt = t0.elapsed();
        // The client goes first (SO_LINGER 0: a reset, no TIME_WAIT).
        let c = c.map(|c| {
            let (s, _) = listener.accept().expect("accept");
            set_linger_zero(&c);
            drop(c);
            drop(s);
        });
        run.note(c, dt);
    }
    run.elapsed = start.elapsed();
    run
}

fn udp(iters: u64, max: Duration, ndst: u32, rate: u64, first: u32) -> Run {
    const PORT: u16 = 40_000;
    let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).or_else(|_| {
        // Another loadgen of the same run holds it: it receives for us too.
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
    });
    let _rx = rx.expect("bind the receiver");
    let tx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the sender");
    let ndst = ndst.clamp(1, 4_000_000);
    let dsts: Vec<SocketAddrV4> = (0..ndst)
        .map(|i| {
            // 127.x.y.1, x.y from the index: every one is local on lo.
            // From FIRST on, the port steps through 1000 values too, so a
            // run with another FIRST sends to destinations no run used.
            let k = first + i;
            let ip = Ipv4Addr::new(127, (k >> 8) as u8, k as u8, 1);
            SocketAddrV4::new(ip, PORT + ((k >> 16) % 1000) as u16)
        })
        .collect();
    let payload = [0u8; 16];
    let mut run = Run::new(iters, 1 << 23);
    let start = Instant::now();
    let mut i = 0usize;
    while run.ops + run.errors < iters && start.elapsed() < max {
        if rate > 0 {
            // Ahead of schedule: wait for the next millisecond step.
            let due = Duration::from_secs_f64((run.ops + run.errors) as f64 / rate as f64);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(1)));
                continue;
            }
        }
        let t0 = Instant::now();
        let r = tx.send_to(&payload, dsts[i]);
        let dt = t0.elapsed();
        i = (i + 1) % dsts.len();
        run.note(r, dt);
    }
    run.elapsed = start.elapsed();
    run
}

/// Per iteration: a new UDP socket, connected to a receiver on 127.0.0.1
/// that never reads, one datagram, closed; the time of the whole.
fn udp_connect(iters: u64, max: Duration) -> Run {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the receiver");
    let to = rx.local_addr().expect("receiver address");
    let payload = [0u8; 16];
    let mut run = Run::new(iters, 1 << 22);
    let start = Instant::now();
    while run.ops + run.errors < iters && start.elapsed() < max {
        let t0 = Instant::now();
        let r = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|tx| tx.connect(to).and_then(|()| tx.send(&payload)));
        let dt = t0.elapsed();
        run.note(r, dt);
    }
    run.elapsed = start.elapsed();
    run
}

/// Attempts to a destination the policy forbids, TCP and UDP in turn, at
/// RATE attempts a second: what was refused (EPERM) and what went out.
fn forbid(iters: u64, max: Duration, addr: std::net::SocketAddr, rate: u64) -> serde_json::Value {
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the sender");
    let (mut tcp_refused, mut tcp_connected, mut udp_refused, mut udp_sent, mut other) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_other: Option<String> = None;
    let start = Instant::now();
    let mut n = 0u64;
    while n < iters && start.elapsed() < max {
        let due = Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(1)));
            continue;
        }
        let r = if n.is_multiple_of(2) {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(|c| {
                set_linger_zero(&c);
                tcp_connected += 1;
            })
        } else {
            udp.send_to(b"forbidden", addr).map(|_| udp_sent += 1)
        };
        if let Err(e) = r {
            if e.raw_os_error() == Some(libc::EPERM) {
                if n.is_multiple_of(2) {
                    tcp_refused += 1;
                } else {
                    udp_refused += 1;
                }
            } else {
                other += 1;
                first_other.get_or_insert_with(|| e.to_string());
            }
        }
        n += 1;
    }
    serde_json::json!({
        "mode": "forbid",
        "pid": std::process::id(),
        "attempts": n,
        "tcp_refused": tcp_refused,
        "tcp_connected": tcp_connected,
        "udp_refused": udp_refused,
        "udp_sent": udp_sent,
        "other_errors": other,
        "first_other_error": first_other,
        "elapsed_s": start.elapsed().as_secs_f64(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or_else(|| usage());
    let iters: u64 = arg(&args, 2);
    let max = Duration::from_secs_f64(arg::<f64>(&args, 3).clamp(0.001, 3600.0));
    if mode == "forbid" {
        let ip: std::net::IpAddr = arg(&args, 4);
        let port: u16 = arg(&args, 5);
        let rate: u64 = arg(&args, 6);
        let out = forbid(iters, max, std::net::SocketAddr::new(ip, port), rate);
        let _ = writeln!(std::io::stdout().lock(), "{out}");
        return;
    }
    let mut run = match mode {
        "tcp" => tcp(iters, max),
        "udp-connect" => udp_connect(iters, max),
        "udp" => {
            let ndst: u32 = arg(&args, 4);
            let rate: u64 = args.get(5).map(|_| arg(&args, 5)).unwrap_or(0);
            let first: u32 = args.get(6).map(|_| arg(&args, 6)).unwrap_or(0);
            udp(iters, max, ndst, rate, first)
        }
        _ => usage(),
    };
    run.lat_ns.sort_unstable();
    let secs = run.elapsed.as_secs_f64();
    let out = serde_json::json!({
        "mode": mode,
        "pid": std::process::id(),
        "ops": run.ops,
        "errors": run.errors,
        "first_error": run.first_error,
        "elapsed_s": secs,
        "rate": if secs > 0.0 { run.ops as f64 / secs } else { 0.0 },
        "lat_p50_ns": percentile(&run.lat_ns, 0.50),
        "lat_p99_ns": percentile(&run.lat_ns, 0.99),
        "lat_mean_ns": if run.lat_ns.is_empty() { 0.0 } else {
            run.lat_ns.iter().map(|&v| f64::from(v)).sum::<f64>() / run.lat_ns.len() as f64
        },
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}
