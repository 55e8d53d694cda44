//! The geo lookup alone, in the kernel: the LPM trie at the full database
//! against the country table, on the same addresses, alternated round by
//! round (`monitor::kernel::lookup_bench`).
use std::path::Path;

use monitor::{
    geo::GeoDb,
    kernel::lookup_bench::{LookupBench, PER_RUN, PROGRAMS},
};
use serde_json::json;

use crate::{
    report::{Figure, Report},
    stats::Summary,
};

const ROUNDS: usize = 7;
const REPEAT: u32 = 4000;

/// `n` addresses inside ranges of the database (a random range, a random
/// offset in it): `v4` picks IPv4 ranges (as mapped addresses), else IPv6.
fn sample(db: &GeoDb, v4: bool, n: usize, seed: u64) -> Vec<[u8; 16]> {
    let mapped = |r: &&monitor::geo::RegionRange| r.start >> 32 == 0xffff;
    let ranges: Vec<_> = db.ranges.iter().filter(|r| mapped(r) == v4).collect();
    let mut next = crate::stats::splitmix(seed);
    (0..n)
        .map(|_| {
            let r = ranges[(next() % ranges.len() as u64) as usize];
            let span = r.end - r.start;
            let off =
                (u128::from(next()) << 64 | u128::from(next())) % span.saturating_add(1).max(1);
            (r.start + off).to_be_bytes()
        })
        .collect()
}

pub fn geo_lookup(r: &mut Report, geoip: &Path) {
    let db = GeoDb::open(geoip).expect("the country database");
    let v4 = sample(&db, true, 1 << 16, 0x9e0);
    let v6 = sample(&db, false, 1 << 16, 0x9e6);
    let mut bench = LookupBench::new(&db, &v4).expect("the lookup bench object");
    let (trie_ms, table_ms) = bench.fill_ms;
    let mut raw = json!({
        "prefixes": bench.prefixes,
        "table_words": bench.table_words,
        "fill_ms": {"trie": trie_ms, "table": table_ms},
        "per_run": PER_RUN, "repeat": REPEAT, "rounds": ROUNDS,
    });
    for (family, addrs) in [("IPv4", &v4), ("IPv6", &v6)] {
        bench.set_addresses(addrs).expect("addresses");
        // Per round, A B C alternated: ns per lookup net of the loop.
        let (mut trie, mut table, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let ns: Vec<f64> = PROGRAMS
                .iter()
                .map(|p| f64::from(bench.run(p, REPEAT).expect("test run")))
                .collect();
            let t = (ns[1] - ns[0]) / f64::from(PER_RUN);
            let f = (ns[2] - ns[0]) / f64::from(PER_RUN);
            trie.push(t);
            table.push(f);
            ratio.push(t / f.max(0.1));
        }
        let (t, f, q) = (Summary::of(&trie), Summary::of(&table), Summary::of(&ratio));
        r.fig(Figure::new(
            &format!("geo lookup alone ({family}, 65,536 addresses in the database): LPM trie at {} prefixes vs country table", bench.prefixes),
            format!(
                "trie {:.0} ns (IQR {:.0}), table {:.1} ns (IQR {:.1}) per lookup: table {:.1}x faster",
                t.median,
                t.iqr(),
                f.median,
                f.iqr(),
                q.median
            ),
            "faster than the trie",
            Some(q.median > 1.0),
        ));
        raw[family] =
            json!({"trie_ns": t.json(), "table_ns": f.json(), "trie_over_table": q.json()});
    }
    r.fig(Figure::new(
        "geo fill alone: 1M trie inserts vs table built in place",
        format!(
            "trie {trie_ms:.0} ms, table {table_ms:.0} ms ({:.1} MiB)",
            bench.table_words as f64 * 4.0 / f64::from(1 << 20)
        ),
        "-",
        None,
    ));
    r.raw["geo_lookup"] = raw;
}
