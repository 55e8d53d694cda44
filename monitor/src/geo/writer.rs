//! A small writer of MaxMind DB files (format 2.0), for test databases that
//! map documentation ranges to countries, in either schema. Networks must
//! not overlap.
use ipnetwork::IpNetwork;

/// A value of the MaxMind DB data section.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }
    pub fn str(s: &str) -> Value {
        Value::Str(s.to_string())
    }

    /// A record in the ip-location-db schema.
    pub fn country_code(cc: &str) -> Value {
        Value::map([("country_code", Value::str(cc))])
    }

    /// A record in MaxMind's GeoIP2 Country schema.
    pub fn geoip2_country(cc: &str, continent: &str) -> Value {
        Value::map([
            ("continent", Value::map([("code", Value::str(continent))])),
            ("country", Value::map([("iso_code", Value::str(cc))])),
            (
                "registered_country",
                Value::map([("iso_code", Value::str(cc))]),
            ),
        ])
    }
}

fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65536 {
        let s = size - 285;
        (30, vec![(s >> 8) as u8, s as u8])
    } else {
        let s = size - 65821;
        (31, vec![(s >> 16) as u8, (s >> 8) as u8, s as u8])
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend(extra);
}

fn uint_bytes(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(8);
    bytes[first..].to_vec()
}

fn encode(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend(s.as_bytes());
        }
        Value::U16(n) => {
            let b = uint_bytes(u64::from(*n));
            control(out, 5, b.len());
            out.extend(b);
        }
        Value::U32(n) => {
            let b = uint_bytes(u64::from(*n));
            control(out, 6, b.len());
            out.extend(b);
        }
        Value::U64(n) => {
            let b = uint_bytes(*n);
            control(out, 9, b.len());
            out.extend(b);
        }
        Value::Map(entries) => {
            control(out, 7, entries.len());
            for (k, v) in entries {
                encode(out, &Value::Str(k.clone()));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds an IPv6 database (IPv4 networks live at ::a.b.c.d/96+n, as in
/// MaxMind's own files).
pub fn build(database_type: &str, networks: &[(IpNetwork, Value)]) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (net, value) in networks {
        let (addr, len): (u128, u32) = match net {
            IpNetwork::V4(n) => (
                u128::from(u32::from(n.network())),
                96 + u32::from(n.prefix()),
            ),
            IpNetwork::V6(n) => (u128::from(n.network()), u32::from(n.prefix())),
        };
        assert!(len > 0, "a /0 network cannot be written");
        let offset = data.len();
        encode(&mut data, value);
        let mut node = 0usize;
        for i in 0..len {
            let bit = ((addr >> (127 - i)) & 1) as usize;
            if i == len - 1 {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    Rec::Empty => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                    Rec::Data(_) => panic!("network {net} overlaps another"),
                };
            }
        }
    }
    let node_count = nodes.len();
    let mut out = Vec::with_capacity(node_count * 8 + 16 + data.len() + 256);
    for n in &nodes {
        for rec in n {
            let v = match *rec {
                Rec::Empty => node_count,
                Rec::Node(i) => i,
                Rec::Data(off) => node_count + 16 + off,
            } as u32;
            out.extend(v.to_be_bytes());
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::map([
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_700_000_000)),
        ("database_type", Value::str(database_type)),
        (
            "description",
            Value::map([("en", Value::str("egress-monitor test database"))]),
        ),
        ("ip_version", Value::U16(6)),
        ("languages", Value::Array(vec![Value::str("en")])),
        ("node_count", Value::U32(node_count as u32)),
        ("record_size", Value::U16(32)),
    ]);
    encode(&mut out, &metadata);
    out
}

/// Convenience for tests: `("198.51.100.0/24", "DE")` pairs in the
/// ip-location-db schema.
pub fn country_code_db(entries: &[(&str, &str)]) -> Vec<u8> {
    let nets: Vec<(IpNetwork, Value)> = entries
        .iter()
        .map(|(n, cc)| (n.parse().expect("test network"), Value::country_code(cc)))
        .collect();
    build("ip-location-db country_code test", &nets)
}
