//! DNS messages on the wire: a builder with name compression (for the
//! server's answers and the client's queries) and a reader for queries.
//! Answers are read with the daemon's own parser, `monitor::names::parse`.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use monitor::names::parse::{
    CLASS_IN, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_CNAME,
};

pub const HEADER_LEN: usize = 12;
/// The largest UDP answer sent without EDNS (RFC 1035 §4.2.1); a longer one
/// goes out truncated (TC=1, no records).
pub const UDP_LIMIT: usize = 512;

pub const QR: u16 = 0x8000;
pub const AA: u16 = 0x0400;
pub const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;

/// The data of a record this tool writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

impl Rdata {
    pub fn rtype(&self) -> u16 {
        match self {
            Rdata::A(_) => TYPE_A,
            Rdata::Aaaa(_) => TYPE_AAAA,
            Rdata::Cname(_) => TYPE_CNAME,
        }
    }

    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            Rdata::A(a) => Some((*a).into()),
            Rdata::Aaaa(a) => Some((*a).into()),
            Rdata::Cname(_) => None,
        }
    }
}

pub fn type_name(rtype: u16) -> String {
    match rtype {
        TYPE_A => "A".into(),
        TYPE_AAAA => "AAAA".into(),
        TYPE_CNAME => "CNAME".into(),
        other => other.to_string(),
    }
}

/// Writes one message: the header, then sections in order (questions, then
/// answers). Counts are filled in as records are added.
pub struct Builder {
    buf: Vec<u8>,
    /// Where each name (and suffix of a name) already written starts, for
    /// compression pointers.
    written: HashMap<String, u16>,
    /// Where each answer record starts.
    pub record_starts: Vec<usize>,
}

impl Builder {
    pub fn new(id: u16, flags: u16) -> Builder {
        let mut buf = Vec::with_capacity(512);
        buf.extend(id.to_be_bytes());
        buf.extend(flags.to_be_bytes());
        buf.extend([0u8; 8]);
        Builder {
            buf,
            written: HashMap::new(),
            record_starts: Vec::new(),
        }
    }

    /// A query for `name` with recursion desired.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut b = Builder::new(id, RD);
        b.question(name, qtype);
        b.finish()
    }

    fn bump(&mut self, count_at: usize) {
        let n = u16::from_be_bytes([self.buf[count_at], self.buf[count_at + 1]]) + 1;
        self.buf[count_at..count_at + 2].copy_from_slice(&n.to_be_bytes());
    }

    /// A name, compressed against the names written before it. Labels
    /// longer than 63 bytes are cut (zone names are checked when loaded).
    pub fn name(&mut self, name: &str) -> &mut Self {
        let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
        for i in 0..labels.len() {
            let suffix = labels[i..].join(".").to_ascii_lowercase();
            if let Some(&at) = self.written.get(&suffix) {
                self.buf.extend((0xc000 | at).to_be_bytes());
                return self;
            }
            if self.buf.len() < 0x3fff {
                self.written.insert(suffix, self.buf.len() as u16);
            }
            let label = &labels[i].as_bytes()[..labels[i].len().min(63)];
            self.buf.push(label.len() as u8);
            self.buf.extend(label);
        }
        self.buf.push(0);
        self
    }

    pub fn question(&mut self, name: &str, qtype: u16) -> &mut Self {
        self.name(name);
        self.buf.extend(qtype.to_be_bytes());
        self.buf.extend(CLASS_IN.to_be_bytes());
        self.bump(4);
        self
    }

    pub fn record(&mut self, owner: &str, ttl: u32, rdata: &Rdata) -> &mut Self {
        self.record_starts.push(self.buf.len());
        self.name(owner);
        self.buf.extend(rdata.rtype().to_be_bytes());
        self.buf.extend(CLASS_IN.to_be_bytes());
        self.buf.extend(ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend([0, 0]);
        match rdata {
            Rdata::A(a) => self.buf.extend(a.octets()),
            Rdata::Aaaa(a) => self.buf.extend(a.octets()),
            Rdata::Cname(target) => {
                self.name(target);
            }
        }
        let len = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        self.bump(6);
        self
    }

    /// Raw bytes, for deliberately broken records; `answers` of them.
    pub fn raw_answers(&mut self, bytes: &[u8], answers: u16) -> &mut Self {
        self.record_starts.push(self.buf.len());
        self.buf.extend(bytes);
        for _ in 0..answers {
            self.bump(6);
        }
        self
    }

    /// Where the next byte goes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// What a query asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub flags: u16,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub qtype: u16,
}

/// Reads a query's header and first question; `None` for anything else
/// (responses, no question, compressed or unprintable names, short data).
pub fn read_query(msg: &[u8]) -> Option<Question> {
    let u16_at = |at: usize| Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]));
    let id = u16_at(0)?;
    let flags = u16_at(2)?;
    if flags & QR != 0 || u16_at(4)? == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            break;
        }
        // Queries are not compressed; 0x40.. are not plain labels.
        if len > 63 {
            return None;
        }
        let label = std::str::from_utf8(msg.get(pos + 1..pos + 1 + len)?).ok()?;
        if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
            return None;
        }
        labels.push(label.to_ascii_lowercase());
        pos += 1 + len;
        if pos - HEADER_LEN > 255 {
            return None;
        }
    }
    let qtype = u16_at(pos + 1)?;
    u16_at(pos + 3)?;
    Some(Question {
        id,
        flags,
        name: labels.join("."),
        qtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::names::parse_answer;

    #[test]
    fn an_answer_built_here_reads_back_with_the_daemons_parser() {
        let mut b = Builder::new(5, QR | AA | RD);
        b.question("alias.test", TYPE_A)
            .record("alias.test", 60, &Rdata::Cname("target.test".into()))
            .record("target.test", 30, &Rdata::A(Ipv4Addr::new(198, 51, 100, 3)));
        let a = parse_answer(&b.finish()).expect("parses");
        assert_eq!(
            (a.id, a.qname.as_str(), a.cname.as_deref()),
            (5, "alias.test", Some("target.test"))
        );
        assert_eq!(
            a.records,
            vec![(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3)), 30)]
        );
    }

    #[test]
    fn a_query_built_here_reads_back() {
        let q = read_query(&Builder::query(9, "Ok.Test.", TYPE_AAAA)).expect("reads");
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype, q.flags),
            (9, "ok.test", TYPE_AAAA, RD)
        );
    }
}
