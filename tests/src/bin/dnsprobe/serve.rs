//! `dnsprobe serve`: an authoritative server on one UDP and TCP port,
//! answering from the zone for a bounded time.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{
    wire::{read_query, type_name, Question},
    zone::{Proto, Zone, SPLIT_PAUSE},
};

/// TCP connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;
/// Queries answered on one TCP connection before it is closed.
const MAX_QUERIES_PER_CONNECTION: usize = 64;
/// A TCP client silent this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(2);
/// The largest query read (over either protocol).
const MAX_QUERY: usize = 4096;

pub fn serve(bind: SocketAddr, zone: Zone, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (udp, tcp) = bind_both(bind)?;
    let local = udp.local_addr()?;
    println!("{}", json!({"serving": local.to_string()}));
    let zone = Arc::new(zone);
    {
        let zone = zone.clone();
        thread::spawn(move || serve_udp(&udp, &zone));
    }
    thread::spawn(move || accept_tcp(&tcp, &zone));
    // Leaving main ends the process, the serving threads with it.
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    Ok(())
}

/// UDP and TCP on the same port; for port 0, a port free for both.
fn bind_both(bind: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(bind.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 && e.kind() == ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("binding TCP {bind}")),
        }
    }
    anyhow::bail!("no port free for both UDP and TCP in 20 tries (last: {last:?})")
}

fn log_query(q: &Question, proto: &str, from: SocketAddr) {
    let line = json!({"query": q.name, "type": type_name(q.qtype), "proto": proto, "id": q.id, "from": from.to_string()});
    println!("{line}");
}

fn serve_udp(sock: &UdpSocket, zone: &Zone) {
    let mut buf = [0u8; MAX_QUERY];
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            // ICMP errors for earlier answers, and the like.
            Err(_) => continue,
        };
        let Some(q) = read_query(&buf[..n]) else {
            continue;
        };
        log_query(&q, "udp", from);
        let reply = zone.answer(&q, Proto::Udp);
        for datagram in reply.before.iter().chain([&reply.message]) {
            if let Err(e) = sock.send_to(datagram, from) {
                eprintln!("dnsprobe serve: sending to {from}: {e}");
            }
        }
    }
}

fn accept_tcp(listener: &TcpListener, zone: &Arc<Zone>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed unanswered
        }
        let (zone, active) = (zone.clone(), active.clone());
        thread::spawn(move || {
            if let Err(e) = serve_connection(stream, &zone) {
                if !matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::WouldBlock | ErrorKind::TimedOut
                ) {
                    eprintln!("dnsprobe serve: TCP: {e}");
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Length-prefixed queries until the client closes, goes quiet or sends
/// something that is not a query.
fn serve_connection(mut stream: TcpStream, zone: &Zone) -> std::io::Result<()> {
    let from = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TCP_IDLE))?;
    stream.set_write_timeout(Some(TCP_IDLE))?;
    for _ in 0..MAX_QUERIES_PER_CONNECTION {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix)?;
        let len = usize::from(u16::from_be_bytes(prefix));
        if len > MAX_QUERY {
            return Ok(());
        }
        let mut msg = vec![0u8; len];
        stream.read_exact(&mut msg)?;
        let Some(q) = read_query(&msg) else {
            return Ok(());
        };
        log_query(&q, "tcp", from);
        let reply = zone.answer(&q, Proto::Tcp);
        let prefix = (reply.message.len() as u16).to_be_bytes();
        if reply.split {
            // Two segments: TCP_NODELAY is set, and the pause outlasts any
            // coalescing.
            stream.write_all(&prefix)?;
            thread::sleep(SPLIT_PAUSE);
            stream.write_all(&reply.message)?;
        } else {
            stream.write_all(&[&prefix[..], &reply.message].concat())?;
        }
    }
    Ok(())
}
