//! The zone file and the answers it gives, well-formed or deliberately not.
//!
//! ```json
//! {"names": {"ok.test":    [{"type": "A", "value": "198.51.100.2", "ttl": 60}],
//!            "alias.test": [{"type": "CNAME", "value": "target.test"}],
//!            "*.flood.test": [{"type": "A", "value": "198.51.100.9"}]},
//!  "behaviours": {"big.test": "truncate", "claim.test": "other-name=ok.test"}}
//! ```
//! `ttl` defaults to 60. `*.suffix` answers for any name under the suffix
//! not listed itself. CNAMEs are followed inside the server (at most 8) and
//! the whole chain is answered. Names not listed: NXDOMAIN.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::wire::{
    Builder, Question, Rdata, AA, CLASS_IN, QR, RCODE_NOERROR, RCODE_NXDOMAIN, RD, TC, TYPE_A,
    TYPE_AAAA, TYPE_CNAME, UDP_LIMIT,
};

/// The A records of an `oversized` answer.
pub const OVERSIZED_RECORDS: u32 = 80;
/// The pause between a `split-tcp` answer's length prefix and its message.
pub const SPLIT_PAUSE: Duration = Duration::from_millis(50);
/// What an `extra-unsolicited` datagram claims unless the behaviour names a
/// question.
pub const EVIL_NAME: &str = "evil.test";
pub const EVIL_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const MAX_CHAIN: usize = 8;

/// How the server misbehaves for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// UDP: TC=1 and no records; TCP: the full answer.
    Truncate,
    /// One record whose owner name is a compression pointer loop.
    Loop,
    /// The answer cut in the middle of its last record.
    Short,
    /// 80 A (or AAAA) records, sent over UDP too whatever the size.
    Oversized,
    /// The answer with another id.
    WrongId,
    /// The answer with this question name (default `other.test`), with the
    /// asked name's addresses under it.
    OtherName(String),
    /// TCP: the length prefix and the message in two writes, 50 ms apart.
    SplitTcp,
    /// UDP: first a datagram with another id for this question (default
    /// `evil.test`, A 203.0.113.2), then the real answer.
    ExtraUnsolicited(String),
}

impl Behaviour {
    fn parse(text: &str) -> Result<Behaviour> {
        let (kind, arg) = match text.split_once('=') {
            Some((k, a)) => (k, Some(check_name(a)?)),
            None => (text, None),
        };
        let no_arg = |b: Behaviour| match arg {
            Some(_) => bail!("behaviour {kind:?} takes no argument"),
            None => Ok(b),
        };
        match kind {
            "truncate" => no_arg(Behaviour::Truncate),
            "loop" => no_arg(Behaviour::Loop),
            "short" => no_arg(Behaviour::Short),
            "oversized" => no_arg(Behaviour::Oversized),
            "wrong-id" => no_arg(Behaviour::WrongId),
            "split-tcp" => no_arg(Behaviour::SplitTcp),
            "other-name" => Ok(Behaviour::OtherName(
                arg.unwrap_or_else(|| "other.test".into()),
            )),
            "extra-unsolicited" => Ok(Behaviour::ExtraUnsolicited(
                arg.unwrap_or_else(|| EVIL_NAME.into()),
            )),
            _ => bail!(
                "unknown behaviour {text:?} (truncate, loop, short, oversized, wrong-id, \
                 other-name[=NAME], split-tcp, extra-unsolicited[=NAME])"
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    names: HashMap<String, Vec<RecordSpec>>,
    #[serde(default)]
    behaviours: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordSpec {
    #[serde(rename = "type")]
    rtype: String,
    value: String,
    #[serde(default = "default_ttl")]
    ttl: u32,
}

fn default_ttl() -> u32 {
    60
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A zone's name, lower-cased without a trailing dot, if it is labels of 1
/// to 63 printable bytes, at most 253 bytes (after an optional `*.`).
fn check_name(name: &str) -> Result<String> {
    let normal = normalise(name);
    let plain = normal.strip_prefix("*.").unwrap_or(&normal);
    let ok = !plain.is_empty()
        && plain.len() <= 253
        && plain
            .split('.')
            .all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_graphic()));
    if !ok {
        bail!("{name:?} is not a DNS name this server can write");
    }
    Ok(normal)
}

/// Where a UDP or TCP answer goes: the messages and how to write them.
#[derive(Debug, Default)]
pub struct Reply {
    /// UDP only: datagrams sent before the answer.
    pub before: Vec<Vec<u8>>,
    pub message: Vec<u8>,
    /// TCP only: write the length prefix and the message apart.
    pub split: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

pub struct Zone {
    names: HashMap<String, Vec<(u32, Rdata)>>,
    behaviours: HashMap<String, Behaviour>,
}

/// What the zone holds for a question, CNAMEs followed.
struct Resolution {
    rcode: u8,
    /// (owner, ttl, data), chain first.
    records: Vec<(String, u32, Rdata)>,
}

impl Zone {
    pub fn load(path: &Path) -> Result<Zone> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Zone::from_json(&text).with_context(|| format!("zone file {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Zone> {
        let file: ZoneFile = serde_json::from_str(text)?;
        let mut names = HashMap::new();
        for (name, specs) in file.names {
            let name = check_name(&name)?;
            let mut records = Vec::new();
            for spec in specs {
                let value = spec.value.as_str();
                let rdata = match spec.rtype.to_ascii_uppercase().as_str() {
                    "A" => Rdata::A(
                        value
                            .parse()
                            .with_context(|| format!("{name}: A {value:?}"))?,
                    ),
                    "AAAA" => Rdata::Aaaa(
                        value
                            .parse()
                            .with_context(|| format!("{name}: AAAA {value:?}"))?,
                    ),
                    "CNAME" => Rdata::Cname(check_name(value)?),
                    other => bail!("{name}: record type {other:?} (A, AAAA or CNAME)"),
                };
                records.push((spec.ttl, rdata));
            }
            names.insert(name, records);
        }
        let mut behaviours = HashMap::new();
        for (name, text) in file.behaviours {
            let name = check_name(&name)?;
            let b = Behaviour::parse(&text).with_context(|| format!("behaviour of {name}"))?;
            behaviours.insert(name, b);
        }
        Ok(Zone { names, behaviours })
    }

    /// A name's entry: itself, else the closest `*.suffix` above it.
    fn find<'a, T>(map: &'a HashMap<String, T>, name: &str) -> Option<&'a T> {
        if let Some(v) = map.get(name) {
            return Some(v);
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(v) = map.get(&format!("*.{parent}")) {
                return Some(v);
            }
            rest = parent;
        }
        None
    }

    fn resolve(&self, name: &str, qtype: u16) -> Resolution {
        let mut records: Vec<(String, u32, Rdata)> = Vec::new();
        let mut owner = name.to_string();
        for _ in 0..MAX_CHAIN {
            let Some(rrs) = Zone::find(&self.names, &owner) else {
                // Not in the zone: NXDOMAIN, or the end of a chain that
                // leaves the zone.
                let rcode = if records.is_empty() {
                    RCODE_NXDOMAIN
                } else {
                    RCODE_NOERROR
                };
                return Resolution { rcode, records };
            };
            let cname = rrs.iter().find_map(|(ttl, r)| match r {
                Rdata::Cname(target) if qtype != TYPE_CNAME => Some((*ttl, target)),
                _ => None,
            });
            let Some((ttl, target)) = cname else {
                let wanted = rrs.iter().filter(|(_, r)| r.rtype() == qtype);
                records.extend(wanted.map(|(ttl, r)| (owner.clone(), *ttl, r.clone())));
                break;
            };
            let looped = *target == name || records.iter().any(|(o, _, _)| o == target);
            records.push((owner, ttl, Rdata::Cname(target.clone())));
            if looped {
                break;
            }
            owner = target.clone();
        }
        Resolution {
            rcode: RCODE_NOERROR,
            records,
        }
    }

    /// The answer to `q` over `proto`, as this name's behaviour has it.
    pub fn answer(&self, q: &Question, proto: Proto) -> Reply {
        let behaviour = Zone::find(&self.behaviours, &q.name);
        let res = self.resolve(&q.name, q.qtype);
        let flags = |rcode: u8| QR | AA | (q.flags & RD) | u16::from(rcode);
        let mut reply = Reply::default();
        let full = |q: &Question, id: u16| {
            let mut b = Builder::new(id, flags(res.rcode));
            b.question(&q.name, q.qtype);
            for (owner, ttl, rdata) in &res.records {
                b.record(owner, *ttl, rdata);
            }
            b
        };
        let first_addr = res.records.iter().find_map(|(_, _, r)| r.addr());
        reply.message = match (behaviour, proto) {
            (Some(Behaviour::Truncate), Proto::Udp) => {
                let mut b = Builder::new(q.id, flags(res.rcode) | TC);
                b.question(&q.name, q.qtype);
                b.finish()
            }
            (Some(Behaviour::Loop), _) => {
                let mut b = Builder::new(q.id, flags(RCODE_NOERROR));
                b.question(&q.name, q.qtype);
                let addr = match first_addr {
                    Some(IpAddr::V4(a)) => a,
                    _ => Ipv4Addr::new(192, 0, 2, 1),
                };
                let rr = looping_record(b.len(), addr);
                b.raw_answers(&rr, 1);
                b.finish()
            }
            (Some(Behaviour::Short), _) => {
                let b = full(q, q.id);
                let cut = match b.record_starts.last() {
                    Some(&start) => start + (b.len() - start) / 2,
                    None => b.len() - 3,
                };
                let mut m = b.finish();
                m.truncate(cut);
                m
            }
            (Some(Behaviour::Oversized), _) => {
                let mut b = Builder::new(q.id, flags(RCODE_NOERROR));
                b.question(&q.name, q.qtype);
                for i in 0..OVERSIZED_RECORDS {
                    let rdata = oversized_record(first_addr, q.qtype, i);
                    b.record(&q.name, 60, &rdata);
                }
                b.finish()
            }
            (Some(Behaviour::WrongId), _) => full(q, q.id ^ 0x5a5a).finish(),
            (Some(Behaviour::OtherName(claimed)), _) => {
                let mut b = Builder::new(q.id, flags(RCODE_NOERROR));
                b.question(claimed, q.qtype);
                for (_, ttl, rdata) in res.records.iter().filter(|(_, _, r)| r.addr().is_some()) {
                    b.record(claimed, *ttl, rdata);
                }
                b.finish()
            }
            (Some(Behaviour::SplitTcp), Proto::Tcp) => {
                reply.split = true;
                full(q, q.id).finish()
            }
            (Some(Behaviour::ExtraUnsolicited(evil)), Proto::Udp) => {
                let mut b = Builder::new(q.id ^ 0x5a5a, flags(RCODE_NOERROR));
                b.question(evil, TYPE_A)
                    .record(evil, 300, &Rdata::A(EVIL_ADDR));
                reply.before.push(b.finish());
                full(q, q.id).finish()
            }
            _ => {
                let m = full(q, q.id).finish();
                if proto == Proto::Udp && m.len() > UDP_LIMIT {
                    let mut b = Builder::new(q.id, flags(res.rcode) | TC);
                    b.question(&q.name, q.qtype);
                    b.finish()
                } else {
                    m
                }
            }
        };
        reply
    }
}

/// An A record whose owner is label "x" and then a pointer back to that
/// label (written at `at`): a pointer backwards, and yet a loop.
fn looping_record(at: usize, addr: Ipv4Addr) -> Vec<u8> {
    let mut rr = vec![1, b'x'];
    rr.extend((0xc000 | at as u16).to_be_bytes());
    rr.extend(TYPE_A.to_be_bytes());
    rr.extend(CLASS_IN.to_be_bytes());
    rr.extend(60u32.to_be_bytes());
    rr.extend(4u16.to_be_bytes());
    rr.extend(addr.octets());
    rr
}

/// The `i`th record of an `oversized` answer: consecutive addresses from the
/// name's first one, else from 198.18.0.1 or 2001:db8:18::1.
fn oversized_record(first: Option<IpAddr>, qtype: u16, i: u32) -> Rdata {
    match first {
        Some(IpAddr::V6(a)) => Rdata::Aaaa(Ipv6Addr::from(u128::from(a) + u128::from(i))),
        Some(IpAddr::V4(a)) => Rdata::A(Ipv4Addr::from(u32::from(a).wrapping_add(i))),
        None if qtype == TYPE_AAAA => Rdata::Aaaa(Ipv6Addr::from(
            (0x2001_0db8_0018_u128 << 80) | u128::from(i + 1),
        )),
        None => Rdata::A(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::names::{parse_answer, ParseError};

    const ZONE: &str = r#"{
        "names": {
            "ok.test": [{"type": "A", "value": "198.51.100.2", "ttl": 30}],
            "alias.test": [{"type": "CNAME", "value": "mid.test"}],
            "mid.test": [{"type": "CNAME", "value": "Target.Test."}],
            "target.test": [{"type": "A", "value": "198.51.100.3"}, {"type": "AAAA", "value": "2001:db8::3"}],
            "loop1.test": [{"type": "CNAME", "value": "loop2.test"}],
            "loop2.test": [{"type": "CNAME", "value": "loop1.test"}],
            "*.flood.test": [{"type": "A", "value": "198.51.100.9"}],
            "many.test": [],
            "big.test": [{"type": "A", "value": "10.1.0.1"}],
            "claim.test": [{"type": "A", "value": "203.0.113.9"}],
            "cut.test": [{"type": "A", "value": "192.0.2.1"}, {"type": "A", "value": "192.0.2.2"}]
        },
        "behaviours": {"big.test": "oversized", "tc.test": "truncate", "lp.test": "loop",
                       "cut.test": "short", "wid.test": "wrong-id", "claim.test": "other-name=ok.test",
                       "split.test": "split-tcp", "extra.test": "extra-unsolicited"}
    }"#;

    fn ask(zone: &Zone, name: &str, qtype: u16, proto: Proto) -> Reply {
        zone.answer(
            &Question {
                id: 77,
                flags: RD,
                name: name.into(),
                qtype,
            },
            proto,
        )
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn chains_are_followed_and_unknown_names_are_nxdomain() {
        let z = Zone::from_json(ZONE).unwrap();
        let a = parse_answer(&ask(&z, "alias.test", TYPE_A, Proto::Udp).message).unwrap();
        assert_eq!(
            (a.cname.as_deref(), a.records.clone()),
            (Some("target.test"), vec![(v4("198.51.100.3"), 60)])
        );
        let a = parse_answer(&ask(&z, "alias.test", TYPE_AAAA, Proto::Udp).message).unwrap();
        assert_eq!(a.records, vec![(v4("2001:db8::3"), 60)]);
        let a = parse_answer(&ask(&z, "loop1.test", TYPE_A, Proto::Udp).message).unwrap();
        assert_eq!((a.rcode, a.records.len()), (RCODE_NOERROR, 0));
        let a = parse_answer(&ask(&z, "r7.flood.test", TYPE_A, Proto::Udp).message).unwrap();
        assert_eq!(a.records, vec![(v4("198.51.100.9"), 60)]);
        let a = parse_answer(&ask(&z, "nope.test", TYPE_A, Proto::Udp).message).unwrap();
        assert_eq!(a.rcode, RCODE_NXDOMAIN);
        assert!(Zone::from_json(r#"{"names": {}, "behaviours": {"x.test": "explode"}}"#).is_err());
        assert!(
            Zone::from_json(r#"{"names": {"x.test": [{"type": "MX", "value": "y"}]}}"#).is_err()
        );
    }

    #[test]
    fn each_behaviour_gives_what_it_says() {
        let z = Zone::from_json(ZONE).unwrap();
        let big = ask(&z, "big.test", TYPE_A, Proto::Udp).message;
        let a = parse_answer(&big).unwrap();
        assert!(
            big.len() > 1200 && a.records.len() == 80 && !a.truncated,
            "{} bytes",
            big.len()
        );
        assert_eq!(a.records[79].0, v4("10.1.0.80"));

        let tc = parse_answer(&ask(&z, "tc.test", TYPE_A, Proto::Udp).message).unwrap();
        assert!(tc.truncated && tc.records.is_empty());
        assert!(
            !parse_answer(&ask(&z, "tc.test", TYPE_A, Proto::Tcp).message)
                .unwrap()
                .truncated
        );

        let lp = parse_answer(&ask(&z, "lp.test", TYPE_A, Proto::Udp).message);
        assert!(matches!(lp, Err(ParseError::PointerLoop { .. })), "{lp:?}");

        let cut = parse_answer(&ask(&z, "cut.test", TYPE_A, Proto::Udp).message).unwrap();
        assert!(
            cut.partial && cut.records == vec![(v4("192.0.2.1"), 60)],
            "{cut:?}"
        );

        assert_eq!(
            parse_answer(&ask(&z, "wid.test", TYPE_A, Proto::Udp).message)
                .unwrap()
                .id,
            77 ^ 0x5a5a
        );

        let claim = parse_answer(&ask(&z, "claim.test", TYPE_A, Proto::Udp).message).unwrap();
        assert_eq!(
            (claim.qname.as_str(), claim.records.clone()),
            ("ok.test", vec![(v4("203.0.113.9"), 60)])
        );

        assert!(ask(&z, "split.test", TYPE_A, Proto::Tcp).split);
        assert!(!ask(&z, "split.test", TYPE_A, Proto::Udp).split);

        let extra = ask(&z, "extra.test", TYPE_A, Proto::Udp);
        let evil = parse_answer(&extra.before[0]).unwrap();
        assert_eq!(
            (evil.qname.as_str(), evil.id, evil.records[0].0),
            ("evil.test", 77 ^ 0x5a5a, v4("203.0.113.2"))
        );
    }

    #[test]
    fn a_udp_answer_over_512_bytes_goes_out_truncated() {
        let records: Vec<String> = (1..=60)
            .map(|i| format!(r#"{{"type": "A", "value": "10.2.0.{i}"}}"#))
            .collect();
        let z = Zone::from_json(&format!(
            r#"{{"names": {{"sixty.test": [{}]}}}}"#,
            records.join(",")
        ))
        .unwrap();
        let udp = parse_answer(&ask(&z, "sixty.test", TYPE_A, Proto::Udp).message).unwrap();
        assert!(udp.truncated && udp.records.is_empty());
        let tcp = parse_answer(&ask(&z, "sixty.test", TYPE_A, Proto::Tcp).message).unwrap();
        assert_eq!(tcp.records.len(), 60);
    }
}
