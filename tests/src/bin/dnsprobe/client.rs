//! The client side: one query, resolve-then-connect rounds, and a flood.
//!
//! By default a client behaves like a careful stub resolver: it takes only
//! an answer with its query's id and question, ignores other messages
//! until its timeout, refuses an answer that ends inside its records, and
//! retries over TCP when a UDP answer is truncated. `--accept-any` takes
//! the first message that parses, whatever it answers: the naive client a
//! test needs to show that the kernel did not learn from a bad answer.
use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use monitor::names::{parse_answer, Answer};
use serde_json::{json, Value};

use crate::wire::{type_name, Builder, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA};

pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses of one answer connected to; the rest are left out.
const MAX_CONNECTS: usize = 128;
/// Distinct error texts kept for a summary.
const MAX_ERRORS: usize = 5;
const MAX_MESSAGE: usize = 65_535;

#[derive(Clone, Copy, Debug)]
pub struct Asker {
    pub server: SocketAddr,
    pub tcp: bool,
    pub qtype: u16,
    pub accept_any: bool,
    /// On a UDP answer with TC=1, ask again over TCP.
    pub tcp_fallback: bool,
}

/// How one query went.
#[derive(Debug)]
pub enum Outcome {
    Answer(Answer),
    /// A message with our id that could not be read (or, strictly, one
    /// that ends inside its records).
    Malformed(String),
    /// Nothing usable before the timeout (or the TCP connection closed).
    Timeout,
}

/// One query and what came back, including the messages ignored on the way.
pub struct Exchange {
    pub outcome: Outcome,
    /// Messages that answered something else (id or question), as JSON.
    pub ignored: Vec<Value>,
    pub tc_retried: bool,
    /// Size of the message the outcome is about.
    pub bytes: Option<usize>,
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::UnexpectedEof
    )
}

impl Asker {
    /// Asks for `name` on a fresh socket with a random id.
    pub fn ask(&self, name: &str) -> std::io::Result<Exchange> {
        let id = fastrand::u16(..);
        let query = Builder::query(id, name, self.qtype);
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut exchange = if self.tcp {
            self.exchange_tcp(&query, id, &name)?
        } else {
            self.exchange_udp(&query, id, &name)?
        };
        let truncated = matches!(&exchange.outcome, Outcome::Answer(a) if a.truncated);
        if truncated && !self.tcp && self.tcp_fallback {
            let mut retry = self.exchange_tcp(&query, id, &name)?;
            retry.ignored.splice(0..0, exchange.ignored);
            retry.tc_retried = true;
            exchange = retry;
        }
        Ok(exchange)
    }

    fn exchange_udp(&self, query: &[u8], id: u16, name: &str) -> std::io::Result<Exchange> {
        let sock = UdpSocket::bind(unspecified_for(self.server))?;
        // Connected, as glibc's stub does: only the server's datagrams
        // arrive.
        sock.connect(self.server)?;
        sock.send(query)?;
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = vec![0u8; MAX_MESSAGE];
        self.wait(id, name, || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(n) => Ok(Some(buf[..n].to_vec())),
                Err(e) if timed_out(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn exchange_tcp(&self, query: &[u8], id: u16, name: &str) -> std::io::Result<Exchange> {
        let deadline = Instant::now() + TIMEOUT;
        let mut stream = TcpStream::connect_timeout(&self.server, TIMEOUT)?;
        stream.set_nodelay(true)?;
        let prefix = (query.len() as u16).to_be_bytes();
        stream.write_all(&[&prefix[..], query].concat())?;
        self.wait(id, name, || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            stream.set_read_timeout(Some(left))?;
            let mut prefix = [0u8; 2];
            let read = stream.read_exact(&mut prefix).and_then(|()| {
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                stream.read_exact(&mut msg).map(|()| msg)
            });
            match read {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if timed_out(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Reads messages from `next` (`None`: timed out or closed) until one
    /// answers query `id` for `name`.
    fn wait(
        &self,
        id: u16,
        name: &str,
        mut next: impl FnMut() -> std::io::Result<Option<Vec<u8>>>,
    ) -> std::io::Result<Exchange> {
        let mut ignored = Vec::new();
        let done = |outcome, ignored, bytes| {
            Ok(Exchange {
                outcome,
                ignored,
                tc_retried: false,
                bytes,
            })
        };
        while let Some(msg) = next()? {
            let bytes = Some(msg.len());
            let ours = msg.len() >= 2 && u16::from_be_bytes([msg[0], msg[1]]) == id;
            match parse_answer(&msg) {
                Ok(a) if self.accept_any => return done(Outcome::Answer(a), ignored, bytes),
                Ok(a) if a.id == id && a.qname == name && a.qtype == self.qtype => {
                    if a.partial {
                        let why = "the answer ends inside its records".to_string();
                        return done(Outcome::Malformed(why), ignored, bytes);
                    }
                    return done(Outcome::Answer(a), ignored, bytes);
                }
                Ok(a) => {
                    ignored.push(json!({"id": a.id, "qname": a.qname, "records": a.records.len()}))
                }
                Err(e) if ours || self.accept_any => {
                    return done(Outcome::Malformed(e.to_string()), ignored, bytes);
                }
                Err(e) => ignored.push(json!({"error": e.to_string()})),
            }
        }
        done(Outcome::Timeout, ignored, None)
    }
}

fn addresses_json(a: &Answer) -> Value {
    a.records
        .iter()
        .map(|(addr, ttl)| json!({"addr": addr.to_string(), "ttl": ttl}))
        .collect()
}

/// `dnsprobe query`: one query, the answer as JSON.
pub fn query(asker: &Asker, name: &str) -> Value {
    match asker.ask(name) {
        Ok(x) => {
            let mut out = match &x.outcome {
                Outcome::Answer(a) => json!({
                    "result": "ok",
                    "id": a.id,
                    "qname": a.qname,
                    "type": type_name(a.qtype),
                    "rcode": a.rcode,
                    "tc": a.truncated,
                    "partial": a.partial,
                    "cname": a.cname,
                    "addresses": addresses_json(a),
                }),
                Outcome::Malformed(e) => json!({"result": "malformed", "error": e}),
                Outcome::Timeout => json!({"result": "timeout"}),
            };
            out["ignored"] = Value::from(x.ignored);
            out["tc_retried"] = Value::from(x.tc_retried);
            out["bytes"] = json!(x.bytes);
            out
        }
        Err(e) => json!({"result": "error", "message": e.to_string(), "errno": e.raw_os_error()}),
    }
}

/// What `resolve-connect` counts.
#[derive(Default)]
struct Tally {
    rounds: u32,
    resolved: u32,
    connected: u32,
    refused: u32,
    eperm: u32,
    other: u32,
    no_answer: u32,
    malformed: u32,
    ignored: u32,
    tc_retries: u32,
    addresses: BTreeSet<IpAddr>,
    errors: BTreeSet<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.insert(what);
        }
    }

    fn connect(&mut self, addr: SocketAddr) {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(_) => self.connected += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.eperm += 1,
            // Refused: the connect was let through to the peer.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => self.refused += 1,
            Err(e) => {
                self.other += 1;
                self.error(format!("connect {addr}: {e}"));
            }
        }
    }
}

/// `dnsprobe resolve-connect`: `rounds` times, resolve `name`, then at
/// once connect to every address it gave. Stops early after `max_time`.
/// With `first`: on one CPU, a connect to it before the first round, its
/// outcome reported as `first`.
pub fn resolve_connect(
    asker: &Asker,
    name: &str,
    port: u16,
    rounds: u32,
    gap: Duration,
    max_time: Duration,
    first: Option<SocketAddr>,
) -> Value {
    let started = Instant::now();
    let first = first.map(|addr| {
        if let Err(e) = stay_on_this_cpu() {
            return format!("not kept on one CPU: {e}");
        }
        let mut t = Tally::default();
        t.connect(addr);
        match (t.connected, t.refused, t.eperm) {
            (1, _, _) => "connected".to_string(),
            (_, 1, _) => "refused".to_string(),
            (_, _, 1) => "eperm".to_string(),
            _ => format!("{:?}", t.errors),
        }
    });
    let mut t = Tally::default();
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(gap);
        }
        if started.elapsed() >= max_time {
            t.error(format!(
                "stopped after {round} rounds: over {} s",
                max_time.as_secs()
            ));
            break;
        }
        t.rounds += 1;
        let exchange = match asker.ask(name) {
            Ok(x) => x,
            Err(e) => {
                t.no_answer += 1;
                t.error(format!("query: {e}"));
                continue;
            }
        };
        t.ignored += exchange.ignored.len() as u32;
        t.tc_retries += u32::from(exchange.tc_retried);
        let answer = match exchange.outcome {
            Outcome::Answer(a) if !a.records.is_empty() => a,
            Outcome::Malformed(e) => {
                t.malformed += 1;
                t.no_answer += 1;
                t.error(format!("answer: {e}"));
                continue;
            }
            _ => {
                t.no_answer += 1;
                continue;
            }
        };
        t.resolved += 1;
        for &(addr, _) in answer.records.iter().take(MAX_CONNECTS) {
            t.connect(SocketAddr::new(addr, port));
        }
        t.addresses.extend(answer.records.iter().map(|(a, _)| *a));
    }
    json!({
        "result": "ok",
        "pid": std::process::id(),
        "rounds": t.rounds,
        "resolved": t.resolved,
        "connected": t.connected,
        "refused": t.refused,
        "eperm": t.eperm,
        "other": t.other,
        "no_answer": t.no_answer,
        "malformed": t.malformed,
        "ignored": t.ignored,
        "tc_retries": t.tc_retries,
        "addresses": t.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "errors": t.errors,
        "first": first,
    })
}

/// Keeps this process on the CPU it runs on now.
fn stay_on_this_cpu() -> std::io::Result<()> {
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed set is a valid empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: the set is valid for its size; 0 is this process.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What `flood` counts of the answers.
#[derive(Default)]
struct FloodTally {
    answers: u32,
    with_addresses: u32,
    nxdomain: u32,
    malformed: u32,
}

impl FloodTally {
    fn take(&mut self, msg: &[u8]) {
        match parse_answer(msg) {
            Ok(a) => {
                self.answers += 1;
                self.with_addresses += u32::from(!a.records.is_empty());
                self.nxdomain += u32::from(a.rcode == RCODE_NXDOMAIN);
            }
            Err(_) => self.malformed += 1,
        }
    }
}

/// `dnsprobe flood`: `count` queries for `r<i>.<suffix>` on one UDP
/// socket, as fast as they go, for at most `max_time`; then up to a second
/// for the last answers.
pub fn flood(
    server: SocketAddr,
    count: u32,
    suffix: &str,
    max_time: Duration,
) -> std::io::Result<Value> {
    let started = Instant::now();
    let sock = UdpSocket::bind(unspecified_for(server))?;
    sock.connect(server)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut t = FloodTally::default();
    let mut sent = 0u32;
    sock.set_nonblocking(true)?;
    'send: for i in 0..count {
        let query = Builder::query(fastrand::u16(..), &format!("r{i}.{suffix}"), TYPE_A);
        loop {
            if started.elapsed() >= max_time {
                break 'send;
            }
            match sock.send(&query) {
                Ok(_) => break,
                // The socket's buffer is full: let it drain, then retry.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e),
            }
        }
        sent += 1;
        while let Ok(n) = sock.recv(&mut buf) {
            t.take(&buf[..n]);
        }
    }
    sock.set_nonblocking(false)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while t.answers + t.malformed < sent {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => t.take(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(json!({
        "result": "ok",
        "pid": std::process::id(),
        "sent": sent,
        "answers": t.answers,
        "with_addresses": t.with_addresses,
        "nxdomain": t.nxdomain,
        "malformed": t.malformed,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// The query type for `--aaaa`.
pub fn qtype(aaaa: bool) -> u16 {
    if aaaa {
        TYPE_AAAA
    } else {
        TYPE_A
    }
}
