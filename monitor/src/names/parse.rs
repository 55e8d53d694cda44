//! Reading a DNS answer the kernel copied: the question, the CNAME chain
//! that starts at it, and the A/AAAA records of that chain.
//!
//! Hand-written rather than `simple-dns`: the kernel copies only the first
//! `dns::PAYLOAD` bytes of a message, so a long answer arrives cut, and the
//! records before the cut are still worth reading (a whole-message parser
//! refuses the lot); and every way a message can be malformed gets its own
//! error here. The parser reads the header, the one question and the answer
//! section, never the authority or additional sections.
//!
//! Names are compared in wire form (length-prefixed, lower-cased labels), so
//! a label that contains a `.` byte is never confused with two labels; only
//! the question name and the end of its chain are turned into text.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use thiserror::Error;

pub const HEADER_LEN: usize = 12;
/// A name's longest wire form: length bytes, labels and the root byte.
pub const MAX_NAME_WIRE: usize = 255;
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_NXDOMAIN: u8 = 3;

/// What an answer says about its question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    /// The question name, lower-case, without a trailing dot (empty for the
    /// root).
    pub qname: String,
    pub qtype: u16,
    /// The last name of the CNAME chain that starts at `qname` (records of
    /// the answer section, in any order; a loop ends the chain), or `None`
    /// when `qname` has no CNAME.
    pub cname: Option<String>,
    /// Every A and AAAA record (class IN) of the answer section owned by
    /// `qname` or a name of its chain, with its TTL in seconds (a TTL with
    /// the top bit set counts as 0, RFC 2181 §8).
    pub records: Vec<(IpAddr, u32)>,
    /// The TC bit: the server had more to say than fitted.
    pub truncated: bool,
    /// The header's 4-bit RCODE (`RCODE_NOERROR`, `RCODE_NXDOMAIN`, ...).
    pub rcode: u8,
    /// The message ended inside the answer section (the kernel's copy is
    /// cut at `dns::PAYLOAD` bytes, or the count claimed more records than
    /// there were): `records` holds those read before the end.
    pub partial: bool,
}

/// Why a message is not an answer this parser can read. Offsets are from
/// the start of the DNS message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("{len} bytes: shorter than the {HEADER_LEN}-byte DNS header")]
    ShortHeader { len: usize },
    #[error("not a response (QR bit clear)")]
    NotResponse,
    #[error("opcode {0}: not a standard query")]
    Opcode(u8),
    #[error("{0} questions: an answer carries exactly one")]
    QuestionCount(u16),
    #[error("the message ends at byte {len}, inside its question")]
    ShortQuestion { len: usize },
    #[error(
        "offset {at}: compression pointer to {target} is outside the message's names (12..{len})"
    )]
    PointerOutOfRange {
        at: usize,
        target: usize,
        len: usize,
    },
    #[error("offset {at}: compression pointer to {target} does not point backwards")]
    PointerForward { at: usize, target: usize },
    #[error("offset {at}: compression pointer to {target} loops back into its own name")]
    PointerLoop { at: usize, target: usize },
    #[error(
        "offset {at}: label length byte {byte:#04x} (longer than 63, or a reserved label type)"
    )]
    BadLabel { at: usize, byte: u8 },
    #[error("offset {at}: name longer than {MAX_NAME_WIRE} bytes")]
    NameTooLong { at: usize },
    #[error("offset {at}: name has byte {byte:#04x}, which is not printable ASCII or is a dot inside a label")]
    NameByte { at: usize, byte: u8 },
    #[error(
        "offset {at}: record of type {rtype} has {len} bytes of data, which do not fit its type"
    )]
    RdataLength { at: usize, rtype: u16, len: u16 },
}

/// Reads one DNS response message (from its header on, without TCP's
/// length prefix).
pub fn parse_answer(msg: &[u8]) -> Result<Answer, ParseError> {
    let m = Msg(msg);
    if msg.len() < HEADER_LEN {
        return Err(ParseError::ShortHeader { len: msg.len() });
    }
    let header = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let id = header(0);
    let flags = header(2);
    if flags & 0x8000 == 0 {
        return Err(ParseError::NotResponse);
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(ParseError::Opcode(opcode));
    }
    let qdcount = header(4);
    if qdcount != 1 {
        return Err(ParseError::QuestionCount(qdcount));
    }
    let ancount = header(6);

    let short_question = |f: Fault| match f {
        Fault::Cut => ParseError::ShortQuestion { len: msg.len() },
        Fault::Bad(e) => e,
    };
    let (qname, end) = read_name(&m, HEADER_LEN).map_err(short_question)?;
    let qtype = m.u16(end).map_err(short_question)?;
    m.u16(end + 2).map_err(short_question)?; // QCLASS
    let qname_text = qname.text(HEADER_LEN)?;

    let mut cnames: HashMap<Name, (Name, usize)> = HashMap::new();
    let mut addresses: Vec<(Name, IpAddr, u32)> = Vec::new();
    let mut partial = false;
    let mut pos = end + 4;
    for _ in 0..ancount {
        match read_record(&m, pos) {
            Ok((record, next)) => {
                match record {
                    Record::Cname { owner, target, at } => {
                        // A second CNAME for the same owner is invalid DNS;
                        // the first one stands.
                        cnames.entry(owner).or_insert((target, at));
                    }
                    Record::Address { owner, addr, ttl } => addresses.push((owner, addr, ttl)),
                    Record::Other => {}
                }
                pos = next;
            }
            Err(Fault::Cut) => {
                partial = true;
                break;
            }
            Err(Fault::Bad(e)) => return Err(e),
        }
    }

    // The chain from the question name; each name once, so a loop ends it.
    let mut chain: HashSet<&Name> = HashSet::from([&qname]);
    let mut last: Option<&(Name, usize)> = None;
    let mut current = &qname;
    while let Some(next) = cnames.get(current) {
        if !chain.insert(&next.0) {
            break;
        }
        last = Some(next);
        current = &next.0;
    }
    let cname = match last {
        Some((name, at)) => Some(name.text(*at)?),
        None => None,
    };
    let records = addresses
        .into_iter()
        .filter(|(owner, _, _)| chain.contains(owner))
        .map(|(_, addr, ttl)| (addr, ttl))
        .collect();

    Ok(Answer {
        id,
        qname: qname_text,
        qtype,
        cname,
        records,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0xf) as u8,
        partial,
    })
}

/// A read that failed: the message ended (a cut copy, or counts that claim
/// more than is there), or it is malformed.
enum Fault {
    Cut,
    Bad(ParseError),
}

impl From<ParseError> for Fault {
    fn from(e: ParseError) -> Self {
        Fault::Bad(e)
    }
}

struct Msg<'a>(&'a [u8]);

impl Msg<'_> {
    fn bytes(&self, at: usize, len: usize) -> Result<&[u8], Fault> {
        let end = at.checked_add(len).ok_or(Fault::Cut)?;
        self.0.get(at..end).ok_or(Fault::Cut)
    }
    fn u8(&self, at: usize) -> Result<u8, Fault> {
        self.0.get(at).copied().ok_or(Fault::Cut)
    }
    fn u16(&self, at: usize) -> Result<u16, Fault> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Result<u32, Fault> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A decoded name in wire form: length-prefixed lower-cased labels, without
/// the root byte.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Name(Vec<u8>);

impl Name {
    /// Dotted text, for a name read at offset `at`.
    fn text(&self, at: usize) -> Result<String, ParseError> {
        let mut out = String::with_capacity(self.0.len());
        let mut i = 0;
        while i < self.0.len() {
            let len = usize::from(self.0[i]);
            if i > 0 {
                out.push('.');
            }
            for &b in &self.0[i + 1..i + 1 + len] {
                if !b.is_ascii_graphic() || b == b'.' {
                    return Err(ParseError::NameByte { at, byte: b });
                }
                out.push(char::from(b));
            }
            i += 1 + len;
        }
        Ok(out)
    }
}

/// Reads the name at `start`; returns it and the offset just past its bytes
/// in place (past the first compression pointer, if any).
///
/// Loop-safe by construction: a pointer must point before the start of the
/// run of labels it ends, so every jump goes strictly backwards and the
/// walk ends. A pointer into that same run is a loop, one at or past itself
/// points forwards; either is an error (compressors only point at names
/// written earlier, so no real message has them).
fn read_name(m: &Msg, start: usize) -> Result<(Name, usize), Fault> {
    let mut pos = start;
    let mut run_start = start;
    let mut end = None;
    let mut wire = Vec::new();
    let mut wire_len = 1; // the root byte
    loop {
        let b = m.u8(pos)?;
        match b & 0xc0 {
            0x00 if b == 0 => return Ok((Name(wire), end.unwrap_or(pos + 1))),
            0x00 => {
                let len = usize::from(b);
                wire_len += 1 + len;
                if wire_len > MAX_NAME_WIRE {
                    return Err(ParseError::NameTooLong { at: start }.into());
                }
                let label = m.bytes(pos + 1, len)?;
                wire.push(b);
                wire.extend(label.iter().map(u8::to_ascii_lowercase));
                pos += 1 + len;
            }
            0xc0 => {
                let target = (usize::from(b & 0x3f) << 8) | usize::from(m.u8(pos + 1)?);
                end.get_or_insert(pos + 2);
                if target < HEADER_LEN || target >= m.0.len() {
                    let len = m.0.len();
                    return Err(ParseError::PointerOutOfRange {
                        at: pos,
                        target,
                        len,
                    }
                    .into());
                }
                if target >= pos {
                    return Err(ParseError::PointerForward { at: pos, target }.into());
                }
                if target >= run_start {
                    return Err(ParseError::PointerLoop { at: pos, target }.into());
                }
                pos = target;
                run_start = target;
            }
            _ => return Err(ParseError::BadLabel { at: pos, byte: b }.into()),
        }
    }
}

enum Record {
    /// `at`: where the target name starts, for error messages.
    Cname {
        owner: Name,
        target: Name,
        at: usize,
    },
    Address {
        owner: Name,
        addr: IpAddr,
        ttl: u32,
    },
    Other,
}

/// Reads the resource record at `at`; returns it and the offset past it.
fn read_record(m: &Msg, at: usize) -> Result<(Record, usize), Fault> {
    let (owner, pos) = read_name(m, at)?;
    let rtype = m.u16(pos)?;
    let class = m.u16(pos + 2)?;
    let ttl = m.u32(pos + 4)?;
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    let rdlen = m.u16(pos + 8)?;
    let rdata_at = pos + 10;
    let rdata = m.bytes(rdata_at, usize::from(rdlen))?;
    let next = rdata_at + usize::from(rdlen);
    let bad_length = || {
        Fault::Bad(ParseError::RdataLength {
            at,
            rtype,
            len: rdlen,
        })
    };
    let record = match (class, rtype) {
        (CLASS_IN, TYPE_A) => {
            let octets: [u8; 4] = rdata.try_into().map_err(|_| bad_length())?;
            Record::Address {
                owner,
                addr: Ipv4Addr::from(octets).into(),
                ttl,
            }
        }
        (CLASS_IN, TYPE_AAAA) => {
            let octets: [u8; 16] = rdata.try_into().map_err(|_| bad_length())?;
            Record::Address {
                owner,
                addr: Ipv6Addr::from(octets).into(),
                ttl,
            }
        }
        (CLASS_IN, TYPE_CNAME) => {
            // The target must fill the record's data exactly; the data is
            // all in the message, so running out is a length error too.
            let (target, end) = match read_name(m, rdata_at) {
                Ok(read) => read,
                Err(Fault::Cut) => return Err(bad_length()),
                Err(bad) => return Err(bad),
            };
            if end != next {
                return Err(bad_length());
            }
            Record::Cname {
                owner,
                target,
                at: rdata_at,
            }
        }
        _ => Record::Other,
    };
    Ok((record, next))
}
