//! dnsprobe: DNS test tooling. An authoritative server answering from a
//! JSON zone file, with per-name misbehaviours for the bad-input tests, and
//! the clients a test runs as its workload. Every command prints JSON lines
//! on stdout and ends within a bounded time.
//!
//! dnsprobe serve --bind IP:PORT --zone FILE --seconds N
//! dnsprobe query --server IP:PORT --name NAME [--tcp] [--aaaa] [--accept-any]
//! dnsprobe resolve-connect --server IP:PORT --name NAME --connect-port P
//!     [--rounds N] [--tcp] [--aaaa] [--gap-ms G] [--accept-any]
//!     [--no-tcp-fallback] [--max-seconds S] [--connect-first IP]
//! dnsprobe flood --server IP:PORT --count N [--suffix flood.test] [--seconds S]
//! dnsprobe forge --server IP:PORT --name NAME --answer IPV4
//!     --via broadcast|multicast|tun|stub [--dev IFNAME] [--connect-port P]
//!
//! The zone file format and the behaviours are in `zone.rs`.
use std::{net::SocketAddr, path::PathBuf, process::exit, time::Duration};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

mod client;
mod forge;
mod serve;
mod wire;
mod zone;

#[derive(Parser)]
#[command(
    name = "dnsprobe",
    about = "DNS server and clients for the egress-monitor tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer from a zone file over UDP and TCP on one port, for N seconds.
    /// Prints {"serving": "IP:PORT"} once bound, then a line per query.
    Serve {
        /// Port 0 picks one free for both UDP and TCP.
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        zone: PathBuf,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// One query; prints the answer (addresses, TTLs, rcode, TC).
    Query {
        #[command(flatten)]
        ask: AskArgs,
    },
    /// Rounds of: resolve on a fresh socket, then at once connect over TCP
    /// to each address. Prints one summary.
    ResolveConnect {
        #[command(flatten)]
        ask: AskArgs,
        #[arg(long)]
        connect_port: u16,
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Pause between rounds.
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
        /// Stop starting rounds after this long.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// Before the first round, connect once to this address (reported
        /// as `first`), with the whole run kept on one CPU: the kernel's
        /// per-CPU caches then see the connects before and after the
        /// answer.
        #[arg(long)]
        connect_first: Option<std::net::IpAddr>,
    },
    /// Queries for COUNT distinct names r<i>.<suffix> on one UDP socket, as
    /// fast as they go. Prints one summary.
    Flood {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value = "flood.test")]
        suffix: String,
        /// Stop sending after this long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Ask the resolver for NAME, then forge its answer (naming ANSWER) by
    /// the route VIA (see `forge.rs`). Prints whether the forged answer
    /// reached the querying socket.
    Forge(forge::Forge),
}

#[derive(Args)]
struct AskArgs {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long)]
    name: String,
    /// Ask over TCP (else UDP).
    #[arg(long)]
    tcp: bool,
    /// Ask for AAAA (else A).
    #[arg(long)]
    aaaa: bool,
    /// Take the first message that parses, whatever id or question it
    /// answers, even cut short (else only the answer to our query).
    #[arg(long)]
    accept_any: bool,
    /// Do not ask again over TCP when a UDP answer has TC=1.
    #[arg(long)]
    no_tcp_fallback: bool,
}

impl AskArgs {
    fn asker(&self) -> client::Asker {
        client::Asker {
            server: self.server,
            tcp: self.tcp,
            qtype: client::qtype(self.aaaa),
            accept_any: self.accept_any,
            tcp_fallback: !self.no_tcp_fallback,
        }
    }
}

fn fail(message: String) -> ! {
    println!("{}", json!({"result": "error", "message": message}));
    exit(1);
}

fn main() {
    match Cli::parse().command {
        Command::Serve {
            bind,
            zone,
            seconds,
        } => {
            let zone = zone::Zone::load(&zone).unwrap_or_else(|e| fail(format!("{e:#}")));
            if let Err(e) = serve::serve(bind, zone, seconds) {
                fail(format!("{e:#}"));
            }
        }
        Command::Query { ask } => println!("{}", client::query(&ask.asker(), &ask.name)),
        Command::ResolveConnect {
            ask,
            connect_port,
            rounds,
            gap_ms,
            max_seconds,
            connect_first,
        } => {
            let gap = Duration::from_millis(gap_ms);
            let max = Duration::from_secs(max_seconds);
            let first = connect_first.map(|ip| SocketAddr::new(ip, connect_port));
            println!(
                "{}",
                client::resolve_connect(
                    &ask.asker(),
                    &ask.name,
                    connect_port,
                    rounds,
                    gap,
                    max,
                    first
                )
            );
        }
        Command::Flood {
            server,
            count,
            suffix,
            seconds,
        } => match client::flood(server, count, &suffix, Duration::from_secs(seconds)) {
            Ok(summary) => println!("{summary}"),
            Err(e) => fail(format!("flood: {e}")),
        },
        Command::Forge(f) => match forge::forge(&f) {
            Ok(v) => println!("{v}"),
            Err(e) => fail(format!("forge: {e:#}")),
        },
    }
}
