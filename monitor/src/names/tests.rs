use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use monitor_common::dns;
use proptest::{prelude::*, test_runner::RngSeed};

use super::{
    parse::{CLASS_IN, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_CNAME},
    parse_answer, Answer, NameTable, ParseError, TtlPolicy,
};

/// A DNS message written byte by byte, so tests can also write broken ones.
struct Msg(Vec<u8>);

const RESPONSE: u16 = 0x8180; // QR, RD, RA, NOERROR

impl Msg {
    fn new(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Msg {
        let mut b = Vec::new();
        for v in [id, flags, qdcount, ancount, 0, 0] {
            b.extend(v.to_be_bytes());
        }
        Msg(b)
    }
    /// An answer header with one question `qname` (type A, class IN).
    fn answer(id: u16, qname: &str, ancount: u16) -> Msg {
        let mut m = Msg::new(id, RESPONSE, 1, ancount);
        m.name(qname).u16(TYPE_A).u16(CLASS_IN);
        m
    }
    fn at(&self) -> usize {
        self.0.len()
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn labels(&mut self, name: &str) -> &mut Self {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            self.0.push(label.len() as u8);
            self.0.extend(label.as_bytes());
        }
        self
    }
    fn name(&mut self, name: &str) -> &mut Self {
        self.labels(name);
        self.0.push(0);
        self
    }
    fn ptr(&mut self, to: usize) -> &mut Self {
        self.u16(0xc000 | to as u16)
    }
    /// Type, class, TTL and data of a record whose owner was just written.
    fn rest(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) -> &mut Self {
        self.u16(rtype).u16(CLASS_IN);
        self.0.extend(ttl.to_be_bytes());
        self.u16(rdata.len() as u16);
        self.0.extend(rdata);
        self
    }
    fn a(&mut self, owner: &str, addr: [u8; 4], ttl: u32) -> &mut Self {
        self.name(owner).rest(TYPE_A, ttl, &addr)
    }
    fn cname(&mut self, owner: &str, target: &str) -> &mut Self {
        let mut rdata = Msg(Vec::new());
        rdata.name(target);
        self.name(owner).rest(TYPE_CNAME, 60, &rdata.0)
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn answer_of(qname: &str, cname: Option<&str>, records: &[(IpAddr, u32)]) -> Answer {
    Answer {
        id: 1,
        qname: qname.into(),
        qtype: TYPE_A,
        cname: cname.map(Into::into),
        records: records.to_vec(),
        truncated: false,
        rcode: 0,
        partial: false,
    }
}

/// An answer with compression, a CNAME chain written out of order, an
/// unrelated record and an AAAA: the shape the fuzz tests mutate.
fn rich_answer() -> Vec<u8> {
    let mut m = Msg::answer(0x1234, "WWW.Example.com", 5);
    let q = 12;
    // target.cdn.net A, before the CNAMEs that lead to it.
    let target = m.at();
    m.labels("target.cdn.net").0.push(0);
    m.rest(TYPE_A, 30, &[192, 0, 2, 7]);
    // mid.example.com CNAME target.cdn.net (compressed to the earlier name).
    let mid = m.at();
    m.labels("mid").ptr(q + 4); // "example.com" of the question
    m.rest(TYPE_CNAME, 60, &[0xc0, target as u8]);
    // www.example.com CNAME mid.example.com.
    m.ptr(q).rest(TYPE_CNAME, 60, &[0xc0, mid as u8]);
    // Unrelated.
    m.a("other.test", [198, 51, 100, 9], 60);
    // target.cdn.net AAAA.
    let mut aaaa = [0u8; 16];
    aaaa[0] = 0x20;
    aaaa[1] = 0x01;
    aaaa[15] = 7;
    m.ptr(target).rest(TYPE_AAAA, 40, &aaaa);
    m.0
}

// ---- parse ----

#[test]
fn a_plain_answer_is_read_lower_cased_without_the_dot() {
    let mut m = Msg::answer(7, "OK.Test.", 2);
    m.ptr(12).rest(TYPE_A, 60, &[198, 51, 100, 2]);
    m.ptr(12).rest(TYPE_A, 30, &[198, 51, 100, 3]);
    let a = parse_answer(&m.0).expect("parses");
    assert_eq!(a.id, 7);
    assert_eq!(a.qname, "ok.test");
    assert_eq!(a.qtype, TYPE_A);
    assert_eq!(a.cname, None);
    assert_eq!(
        a.records,
        vec![(v4(198, 51, 100, 2), 60), (v4(198, 51, 100, 3), 30)]
    );
    assert!(!a.truncated && !a.partial);
    assert_eq!(a.rcode, 0);
}

#[test]
fn a_cname_chain_in_any_order_ends_at_its_target_and_keeps_its_addresses() {
    let a = parse_answer(&rich_answer()).expect("parses");
    assert_eq!(a.qname, "www.example.com");
    assert_eq!(a.cname.as_deref(), Some("target.cdn.net"));
    let v6: IpAddr = "2001::7".parse().unwrap();
    assert_eq!(
        a.records,
        vec![(v4(192, 0, 2, 7), 30), (v6, 40)],
        "other.test left out"
    );
}

#[test]
fn a_cname_loop_ends_the_chain() {
    let mut m = Msg::answer(1, "a.test", 3);
    m.cname("a.test", "b.test")
        .cname("b.test", "a.test")
        .a("b.test", [192, 0, 2, 1], 5);
    let a = parse_answer(&m.0).expect("parses");
    assert_eq!(a.cname.as_deref(), Some("b.test"));
    assert_eq!(a.records, vec![(v4(192, 0, 2, 1), 5)]);
}

#[test]
fn nxdomain_and_tc_are_reported() {
    let m = Msg::new(9, RESPONSE | 0x0200 | u16::from(RCODE_NXDOMAIN), 1, 0);
    let mut m = m;
    m.name("nope.test").u16(TYPE_AAAA).u16(CLASS_IN);
    let a = parse_answer(&m.0).expect("parses");
    assert_eq!(
        (a.rcode, a.truncated, a.qtype),
        (RCODE_NXDOMAIN, true, TYPE_AAAA)
    );
    assert!(a.records.is_empty());
}

#[test]
fn a_ttl_with_the_top_bit_set_counts_as_zero() {
    let mut m = Msg::answer(1, "ok.test", 1);
    m.a("ok.test", [192, 0, 2, 1], 0x8000_0001);
    assert_eq!(
        parse_answer(&m.0).unwrap().records,
        vec![(v4(192, 0, 2, 1), 0)]
    );
}

#[test]
fn records_of_other_classes_and_types_are_skipped() {
    let mut m = Msg::answer(1, "ok.test", 3);
    m.name("ok.test")
        .u16(TYPE_A)
        .u16(3)
        .0
        .extend([0, 0, 0, 9, 0, 4, 1, 2, 3, 4]); // class CH
    m.name("ok.test").rest(16, 9, b"\x03txt"); // TXT
    m.a("ok.test", [192, 0, 2, 1], 9);
    assert_eq!(
        parse_answer(&m.0).unwrap().records,
        vec![(v4(192, 0, 2, 1), 9)]
    );
}

#[test]
fn every_cut_of_an_answer_is_an_error_or_a_partial_answer() {
    let full = rich_answer();
    let whole = parse_answer(&full).unwrap();
    let question_end = 12 + "www.example.com".len() + 2 + 4;
    for len in 0..full.len() {
        match parse_answer(&full[..len]) {
            Err(ParseError::ShortHeader { .. }) => assert!(len < 12),
            Err(ParseError::ShortQuestion { len: l }) => {
                assert!(len >= 12 && len < question_end && l == len)
            }
            Ok(a) => {
                assert!(len >= question_end && a.partial, "cut at {len}");
                assert!(a.records.iter().all(|r| whole.records.contains(r)));
            }
            Err(e) => panic!("cut at {len}: {e}"),
        }
    }
}

#[test]
fn counts_larger_than_the_data_give_a_partial_answer() {
    let mut m = Msg::answer(1, "ok.test", 40);
    m.a("ok.test", [192, 0, 2, 1], 9);
    let a = parse_answer(&m.0).unwrap();
    assert!(a.partial);
    assert_eq!(a.records, vec![(v4(192, 0, 2, 1), 9)]);
}

#[test]
fn queries_and_question_counts_other_than_one_are_refused() {
    let mut q = Msg::new(1, 0x0100, 1, 0);
    q.name("ok.test").u16(TYPE_A).u16(CLASS_IN);
    assert_eq!(parse_answer(&q.0), Err(ParseError::NotResponse));
    for qd in [0, 2] {
        let mut m = Msg::new(1, RESPONSE, qd, 0);
        m.name("ok.test").u16(TYPE_A).u16(CLASS_IN);
        assert_eq!(parse_answer(&m.0), Err(ParseError::QuestionCount(qd)));
    }
    let mut m = Msg::new(1, RESPONSE | (2 << 11), 1, 0);
    m.name("ok.test").u16(TYPE_A).u16(CLASS_IN);
    assert_eq!(parse_answer(&m.0), Err(ParseError::Opcode(2)));
}

#[test]
fn compression_pointer_loops_and_strays_are_refused() {
    // A pointer to itself.
    let mut m = Msg::answer(1, "ok.test", 1);
    let at = m.at();
    m.ptr(at).rest(TYPE_A, 9, &[1, 2, 3, 4]);
    assert_eq!(
        parse_answer(&m.0),
        Err(ParseError::PointerForward { at, target: at })
    );
    // A pointer backwards into its own name: backwards, yet a loop.
    let mut m = Msg::answer(1, "ok.test", 1);
    let at = m.at();
    m.labels("x").ptr(at).rest(TYPE_A, 9, &[1, 2, 3, 4]);
    assert_eq!(
        parse_answer(&m.0),
        Err(ParseError::PointerLoop {
            at: at + 2,
            target: at
        })
    );
    // A pointer forwards, to bytes after it.
    let mut m = Msg::answer(1, "ok.test", 1);
    let at = m.at();
    m.labels("a").ptr(at + 6).rest(TYPE_A, 9, &[1, 2, 3, 4]);
    assert_eq!(
        parse_answer(&m.0),
        Err(ParseError::PointerForward {
            at: at + 2,
            target: at + 6
        })
    );
    // Out of the message, and into the header.
    for target in [0x3fff, 4] {
        let mut m = Msg::answer(1, "ok.test", 1);
        let at = m.at();
        m.ptr(target).rest(TYPE_A, 9, &[1, 2, 3, 4]);
        let len = m.0.len();
        assert_eq!(
            parse_answer(&m.0),
            Err(ParseError::PointerOutOfRange { at, target, len })
        );
    }
    // In the question itself.
    let mut m = Msg::new(1, RESPONSE, 1, 0);
    m.labels("q").ptr(12).u16(TYPE_A).u16(CLASS_IN);
    assert_eq!(
        parse_answer(&m.0),
        Err(ParseError::PointerLoop { at: 14, target: 12 })
    );
}

#[test]
fn labels_over_63_and_names_over_255_bytes_are_refused() {
    for byte in [0x40, 0x7f, 0x80, 0xbf] {
        let mut m = Msg::new(1, RESPONSE, 1, 0);
        m.0.push(byte);
        m.0.extend([b'a'; 70]);
        assert_eq!(
            parse_answer(&m.0),
            Err(ParseError::BadLabel { at: 12, byte })
        );
    }
    let l63 = "a".repeat(63);
    // 3 x (1 + 63) + (1 + 61) + root = 255: the longest name there is.
    let longest = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
    let mut m = Msg::answer(1, &longest, 0);
    assert_eq!(parse_answer(&m.0).unwrap().qname, longest);
    m = Msg::answer(1, &format!("{longest}b"), 0);
    assert_eq!(parse_answer(&m.0), Err(ParseError::NameTooLong { at: 12 }));
    // Too long through pointers: each a back-reference, the total too long.
    let mut m = Msg::answer(1, "ok.test", 1);
    let base = m.at();
    m.labels(&l63)
        .labels(&l63)
        .labels(&l63)
        .ptr(12)
        .rest(TYPE_A, 9, &[1, 2, 3, 4]);
    // A record whose owner is 63-byte label + the previous owner.
    let mut n = Msg(m.0.clone());
    n.0[7] = 2;
    n.labels(&l63).ptr(base).rest(TYPE_A, 9, &[1, 2, 3, 4]);
    assert_eq!(
        parse_answer(&n.0),
        Err(ParseError::NameTooLong { at: m.0.len() })
    );
}

#[test]
fn bytes_a_name_text_cannot_hold_are_refused() {
    for label in ["a b", "a\u{7f}", "\u{0}"] {
        let mut m = Msg::new(1, RESPONSE, 1, 0);
        m.0.push(label.len() as u8);
        m.0.extend(label.as_bytes());
        m.0.extend([0, 0, 1, 0, 1]);
        assert!(
            matches!(parse_answer(&m.0), Err(ParseError::NameByte { at: 12, .. })),
            "{label:?}"
        );
    }
    // A dot inside a label is not a label boundary.
    let mut m = Msg::new(1, RESPONSE, 1, 0);
    m.0.extend(b"\x03a.b\x00\x00\x01\x00\x01");
    assert_eq!(
        parse_answer(&m.0),
        Err(ParseError::NameByte { at: 12, byte: b'.' })
    );
}

#[test]
fn address_and_cname_records_must_fit_their_data() {
    let mut m = Msg::answer(1, "ok.test", 1);
    let at = m.at();
    m.ptr(12).rest(TYPE_A, 9, &[1, 2, 3, 4, 5]);
    let err = parse_answer(&m.0).unwrap_err();
    assert_eq!(
        err,
        ParseError::RdataLength {
            at,
            rtype: TYPE_A,
            len: 5
        }
    );
    assert_eq!(
        err.to_string(),
        format!("offset {at}: record of type 1 has 5 bytes of data, which do not fit its type")
    );
    let mut m = Msg::answer(1, "ok.test", 1);
    m.ptr(12).rest(TYPE_AAAA, 9, &[0; 4]);
    assert!(matches!(
        parse_answer(&m.0),
        Err(ParseError::RdataLength {
            rtype: TYPE_AAAA,
            ..
        })
    ));
    // A CNAME whose name runs past its data, or leaves some over.
    for rdata in [&b"\x01x"[..], b"\x01x\x00\x00"] {
        let mut m = Msg::answer(1, "ok.test", 1);
        m.ptr(12).rest(TYPE_CNAME, 9, rdata);
        m.0.extend([0; 8]);
        assert!(matches!(
            parse_answer(&m.0),
            Err(ParseError::RdataLength {
                rtype: TYPE_CNAME,
                ..
            })
        ));
    }
}

// ---- no input panics ----

fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        rng_seed: RngSeed::Fixed(0x00d5_a115),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Parses, and learns what parses, as the daemon would.
fn parse_and_learn(bytes: &[u8]) {
    if let Ok(a) = parse_answer(bytes) {
        assert!(a.qname.len() <= 253 && a.records.len() <= bytes.len() / 15);
        let mut t = NameTable::new(4, 4);
        t.learn(1, &a, 0, (0, 0, 60));
        assert!(t.len() <= 4 && t.names_len() <= 4);
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Random bytes: an error or an answer, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_and_learn(&bytes);
    }

    /// Random bytes behind a valid response header with one question.
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), an in 0u16..40) {
        let mut m = Msg::new(1, RESPONSE, 1, an);
        m.0.extend(body);
        parse_and_learn(&m.0);
    }

    /// A valid answer with up to four bytes changed and maybe cut: never a
    /// panic.
    #[test]
    fn mutated_answers_never_panic(
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = rich_answer();
        for (at, byte) in changes {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        parse_and_learn(&bytes);
        let len = cut.index(bytes.len() + 1);
        parse_and_learn(&bytes[..len]);
    }
}

// ---- table ----

const SEC: u64 = 1_000_000_000;
const POLICY: (u32, u32, u32) = (5, 10, 3600);

#[test]
fn the_least_recently_used_address_is_evicted_first() {
    let mut t = NameTable::new(3, 16);
    for (i, name) in ["a.test", "b.test", "c.test"].iter().enumerate() {
        t.learn(
            1,
            &answer_of(name, None, &[(v4(192, 0, 2, i as u8), 60)]),
            0,
            POLICY,
        );
    }
    assert!(
        t.lookup(1, v4(192, 0, 2, 0), SEC).is_some(),
        "a.test used, so b.test is now the oldest"
    );
    t.learn(
        1,
        &answer_of("d.test", None, &[(v4(192, 0, 2, 3), 60)]),
        SEC,
        POLICY,
    );
    assert_eq!(t.len(), 3);
    assert!(t.peek(1, v4(192, 0, 2, 1)).is_none(), "b.test evicted");
    for i in [0, 2, 3] {
        assert!(t.peek(1, v4(192, 0, 2, i)).is_some());
    }
    assert_eq!(
        (
            t.counters().evicted,
            t.counters().expired,
            t.counters().learned
        ),
        (1, 0, 4)
    );
}

#[test]
fn an_address_counts_for_its_clamped_ttl_plus_the_grace_period() {
    let mut t = NameTable::new(16, 16);
    let short = v4(192, 0, 2, 1);
    let long = v4(192, 0, 2, 2);
    t.learn(
        1,
        &answer_of("ok.test", None, &[(short, 1), (long, 1_000_000)]),
        100 * SEC,
        POLICY,
    );
    // 1 s raised to the 5 s minimum, plus 10 s grace.
    assert!(t.lookup(1, short, 115 * SEC - 1).is_some());
    assert!(t.lookup(1, short, 115 * SEC).is_none());
    assert_eq!(t.counters().expired, 1);
    assert!(t.peek(1, short).is_none(), "dropped once found expired");
    // 1,000,000 s lowered to the 3600 s maximum, plus 10 s grace.
    assert_eq!(t.peek(1, long).unwrap().expires_ns, (100 + 3610) * SEC);
    assert_eq!(t.expire(3710 * SEC - 1), 0);
    assert_eq!(t.expire(3710 * SEC), 1);
    assert!(t.is_empty());
    assert_eq!(
        TtlPolicy::from((30, 0, 10)).lifetime_ns(5),
        30 * SEC,
        "max below min counts as min"
    );
}

#[test]
fn an_expired_entry_pushed_out_counts_as_expired_not_evicted() {
    let mut t = NameTable::new(1, 4);
    t.learn(
        1,
        &answer_of("a.test", None, &[(v4(192, 0, 2, 1), 0)]),
        0,
        (0, 0, 60),
    );
    t.learn(
        1,
        &answer_of("b.test", None, &[(v4(192, 0, 2, 2), 0)]),
        SEC,
        (0, 0, 60),
    );
    assert_eq!((t.counters().expired, t.counters().evicted), (1, 0));
}

#[test]
fn one_cgroups_lookup_is_not_visible_to_another() {
    let mut t = NameTable::new(16, 16);
    let addr = v4(198, 51, 100, 2);
    t.learn(100, &answer_of("ok.test", None, &[(addr, 60)]), 0, POLICY);
    assert_eq!(
        t.lookup(100, addr, SEC)
            .map(|(q, _)| q.to_string())
            .as_deref(),
        Some("ok.test")
    );
    assert_eq!(t.lookup(200, addr, SEC), None);
}

#[test]
fn the_cname_is_kept_and_names_are_shared() {
    let mut t = NameTable::new(16, 16);
    let (a, b) = (v4(192, 0, 2, 1), "2001:db8::1".parse().unwrap());
    let answer = answer_of("www.example.com", Some("edge.cdn.net"), &[(a, 60), (b, 60)]);
    assert_eq!(t.learn(1, &answer, 0, POLICY), 2);
    t.learn(2, &answer, 0, POLICY);
    let (q, c) = t.lookup(1, a, SEC).unwrap();
    assert_eq!(
        (&*q, c.as_deref()),
        ("www.example.com", Some("edge.cdn.net"))
    );
    let (q2, c2) = t.lookup(2, b, SEC).unwrap();
    assert!(
        Arc::ptr_eq(&q, &q2) && Arc::ptr_eq(&c.unwrap(), &c2.unwrap()),
        "one copy of each name"
    );
    let hash = dns::name_hashes(b"www.example.com", 0).unwrap().full;
    assert!(Arc::ptr_eq(&t.name_of(hash).unwrap(), &q));
    assert_eq!(t.names_len(), 2);
}

#[test]
fn ipv4_mapped_addresses_are_the_ipv4_ones() {
    let mut t = NameTable::new(16, 16);
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    t.learn(1, &answer_of("ok.test", None, &[(mapped, 60)]), 0, POLICY);
    assert!(t.lookup(1, v4(192, 0, 2, 1), SEC).is_some());
    assert!(t.lookup(1, IpAddr::V6(Ipv6Addr::LOCALHOST), SEC).is_none());
}

#[test]
fn names_the_kernel_cannot_hash_are_not_learned() {
    let mut t = NameTable::new(16, 16);
    let seventeen = vec!["a"; dns::MAX_LABELS + 1].join(".");
    for name in ["", seventeen.as_str()] {
        assert_eq!(
            t.learn(
                1,
                &answer_of(name, None, &[(v4(192, 0, 2, 1), 60)]),
                0,
                POLICY
            ),
            0
        );
    }
    assert_eq!((t.len(), t.counters().skipped), (0, 2));
    // Nor is a name with no addresses (no hash will be reported for it).
    t.learn(1, &answer_of("nx.test", None, &[]), 0, POLICY);
    assert_eq!(t.names_len(), 0);
}

#[test]
fn a_flood_of_a_million_distinct_answers_stays_within_capacity() {
    let mut t = NameTable::new(
        crate::pipeline::NAME_TABLE_ADDRESSES,
        crate::pipeline::NAME_TABLE_NAMES,
    );
    const N: u32 = 1_000_000;
    for i in 0..N {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
        let answer = answer_of(&format!("r{i}.flood.test"), None, &[(addr, 60)]);
        t.learn(7, &answer, u64::from(i), POLICY);
    }
    assert_eq!(t.len(), crate::pipeline::NAME_TABLE_ADDRESSES);
    assert_eq!(t.names_len(), crate::pipeline::NAME_TABLE_NAMES);
    let c = t.counters();
    assert_eq!(c.learned, u64::from(N));
    assert_eq!(
        c.evicted,
        u64::from(N) - crate::pipeline::NAME_TABLE_ADDRESSES as u64
    );
    assert_eq!(
        c.names_evicted,
        u64::from(N) - crate::pipeline::NAME_TABLE_NAMES as u64
    );
    // The newest are there, the oldest gone.
    let last = N - 1;
    let hash = dns::name_hashes(format!("r{last}.flood.test").as_bytes(), 0)
        .unwrap()
        .full;
    assert_eq!(
        t.name_of(hash).as_deref(),
        Some(format!("r{last}.flood.test").as_str())
    );
    assert!(t
        .name_of(dns::name_hashes(b"r0.flood.test", 0).unwrap().full)
        .is_none());
}
