//! Hourly sums of the flows over the columns people group by, so a
//! `flows --group-by` over a day reads at most 24 rows per group instead of
//! every flow minute.
//!
//! Each rollup leaves out the destination (address, port, name) and the
//! process; `flows_by_place` keeps where the traffic went (verdict, policy,
//! protocol, country, continent, cloud region), `flows_by_cgroup` who sent
//! it (cgroup, verdict, policy, protocol). The writer adds to them in the
//! transaction that adds to the flow minutes, so they never disagree with
//! them; a grouping or a filter that needs a column a rollup lacks reads
//! the minutes as before. Retention removes whole hours only, and records
//! from when on the rollups are whole (`meta.rollups_from`): an hour that
//! retention cut into is read from its minutes.
use std::{borrow::Cow, collections::HashMap};

use rusqlite::{params_from_iter, types::Value, Transaction};

use super::{flow::Flow, Store, StoreError};
use crate::events::Event;

pub const HOUR: i64 = 3_600_000_000_000;

/// The hour a time falls in.
pub fn hour_of(t: i64) -> i64 {
    t - t.rem_euclid(HOUR)
}

/// One rollup: its table and the flow columns it keeps.
pub struct Rollup {
    pub table: &'static str,
    pub dims: &'static [&'static str],
}

pub const ROLLUPS: [Rollup; 2] = [
    Rollup {
        table: "flows_by_place",
        dims: &[
            "verdict",
            "policy",
            "protocol",
            "country",
            "continent",
            "cloud_region",
        ],
    },
    Rollup {
        table: "flows_by_cgroup",
        dims: &["cgroup", "verdict", "policy", "protocol"],
    },
];

fn column_type(dim: &str) -> &'static str {
    if dim == "cgroup" {
        "INTEGER"
    } else {
        "TEXT"
    }
}

/// The tables (for a new store and for the upgrade from version 7).
pub fn create_sql() -> String {
    let mut sql = String::new();
    for r in &ROLLUPS {
        let cols: Vec<String> = r
            .dims
            .iter()
            .map(|d| format!("{d} {} NOT NULL", column_type(d)))
            .collect();
        sql.push_str(&format!(
            "CREATE TABLE {} (hour INTEGER NOT NULL, {}, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (hour, {})) WITHOUT ROWID;\n",
            r.table,
            cols.join(", "),
            r.dims.join(", ")
        ));
    }
    sql
}

/// Fills the rollups from the flow minutes (the upgrade from version 7).
/// An hour retention had cut into stays out of use (`rollups_from`).
pub fn fill_sql() -> String {
    let mut sql = String::new();
    for r in &ROLLUPS {
        let dims = r.dims.join(", ");
        sql.push_str(&format!(
            "INSERT INTO {} (hour, {dims}, first_seen, last_seen, count, packets, bytes) SELECT bucket - (bucket % {HOUR}), {dims}, min(first_seen), max(last_seen), sum(count) + sum(repeats), sum(packets), sum(bytes) FROM flows GROUP BY 1, {dims};\n",
            r.table
        ));
    }
    sql.push_str(&format!(
        "INSERT OR REPLACE INTO meta (key, value) SELECT 'rollups_from', CAST(coalesce(max(before_nanos) - (max(before_nanos) % {HOUR}) + {HOUR}, 0) AS TEXT) FROM retention_log;\n"
    ));
    sql
}

fn upsert_sql(r: &Rollup) -> String {
    let dims = r.dims.join(", ");
    let marks: Vec<String> = (0..r.dims.len() + 6)
        .map(|i| format!("?{}", i + 1))
        .collect();
    format!(
        "INSERT INTO {} (hour, {dims}, first_seen, last_seen, count, packets, bytes) VALUES ({}) ON CONFLICT (hour, {dims}) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen), count = count + excluded.count, packets = packets + excluded.packets, bytes = bytes + excluded.bytes",
        r.table,
        marks.join(", ")
    )
}

/// A rollup column's value, borrowed from the batch's events where it can
/// be (the writer adds a batch without an allocation per event).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Dim<'a> {
    Int(i64),
    Text(Cow<'a, str>),
}

/// The most columns a rollup keeps.
const MAX_DIMS: usize = 6;

fn dim_of<'a>(d: &str, ev: &'a Event, cgroup: i64) -> Dim<'a> {
    Dim::Text(match d {
        "cgroup" => return Dim::Int(cgroup),
        "verdict" => Cow::Borrowed(ev.verdict),
        "policy" => Cow::Borrowed(&ev.policy),
        "protocol" => Cow::Borrowed(ev.protocol),
        "country" => Cow::Borrowed(&ev.country),
        "continent" => Cow::Borrowed(&ev.continent),
        "cloud_region" if ev.cloud.is_empty() => Cow::Borrowed(""),
        "cloud_region" => Cow::Owned(super::cloud_place(ev)),
        other => unreachable!("rollup column {other} is not a flow column"),
    })
}

#[derive(Debug, Clone, Copy)]
struct Sums {
    first: i64,
    last: i64,
    count: i64,
    packets: i64,
    bytes: i64,
}

/// What one batch adds to the rollups, summed before it is written (a
/// batch of 4,096 events is a few hundred upserts, not 8,192).
#[derive(Default)]
pub struct Pending<'a>(HashMap<(usize, i64, [Dim<'a>; MAX_DIMS]), Sums, ahash::RandomState>);

impl<'a> Pending<'a> {
    /// Adds what `upsert_flow` adds to a flow minute.
    pub fn add(&mut self, ev: &'a Event, cgroup: i64, count: i64, packets: i64, bytes: i64) {
        let t = ev.unix_nanos as i64;
        for (i, r) in ROLLUPS.iter().enumerate() {
            let dims = std::array::from_fn(|k| match r.dims.get(k) {
                Some(d) => dim_of(d, ev, cgroup),
                None => Dim::Int(0),
            });
            let key = (i, hour_of(t), dims);
            let s = self.0.entry(key).or_insert(Sums {
                first: t,
                last: t,
                count: 0,
                packets: 0,
                bytes: 0,
            });
            s.first = s.first.min(t);
            s.last = s.last.max(t);
            s.count += count;
            s.packets += packets;
            s.bytes += bytes;
        }
    }

    pub fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let sql: Vec<String> = ROLLUPS.iter().map(upsert_sql).collect();
        for ((i, hour, dims), s) in self.0.drain() {
            let mut stmt = tx.prepare_cached(&sql[i])?;
            let mut values = vec![Value::Integer(hour)];
            values.extend(
                dims.into_iter()
                    .take(ROLLUPS[i].dims.len())
                    .map(|d| match d {
                        Dim::Int(n) => Value::Integer(n),
                        Dim::Text(s) => Value::Text(s.into_owned()),
                    }),
            );
            values.extend([s.first, s.last, s.count, s.packets, s.bytes].map(Value::Integer));
            stmt.execute(params_from_iter(values))?;
        }
        Ok(())
    }
}

/// Retention: the hours wholly before `cutoff` go; the rollups are whole
/// from the next hour on.
pub fn remove_before(tx: &Transaction<'_>, cutoff: i64) -> rusqlite::Result<()> {
    let from = hour_of(cutoff)
        + if cutoff.rem_euclid(HOUR) == 0 {
            0
        } else {
            HOUR
        };
    for r in &ROLLUPS {
        tx.execute(&format!("DELETE FROM {} WHERE hour < ?1", r.table), [from])?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('rollups_from', ?1) ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        [from.to_string()],
    )?;
    Ok(())
}

/// The flow columns a grouping needs (`query::GROUP_FIELDS`), or None when
/// it needs one no rollup keeps.
fn needed(by: &[String]) -> Option<Vec<&'static str>> {
    let mut out = Vec::new();
    for b in by {
        out.extend_from_slice(match b.as_str() {
            "cgroup" => &["cgroup"][..],
            "protocol" => &["protocol"],
            "verdict" => &["verdict"],
            "policy" => &["policy"],
            "country" => &["country", "continent"],
            "continent" => &["continent"],
            "cloud" => &["cloud_region"],
            _ => return None,
        });
    }
    Some(out)
}

/// Grouped flows and the hours [first, end) they cover.
pub type Hours = (Vec<Flow>, (i64, i64));

/// The grouped flows of the whole hours in [since, until) from the first
/// rollup that keeps every column the grouping and the filter use, with
/// the hours it covered; None when no rollup does or no whole hour is in
/// the window.
pub fn grouped(
    store: &Store,
    since: i64,
    until: i64,
    by: &[String],
    filter: &super::flow::FlowFilter,
) -> Option<Result<Hours, StoreError>> {
    let need = needed(by)?;
    let rollup = ROLLUPS.iter().find(|r| {
        need.iter()
            .chain(filter.columns.iter())
            .all(|c| r.dims.contains(c))
    })?;
    let run = || -> Result<Option<Hours>, StoreError> {
        let whole_from: i64 = store
            .conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'rollups_from'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let first =
            (hour_of(since) + if since.rem_euclid(HOUR) == 0 { 0 } else { HOUR }).max(whole_from);
        let end = hour_of(until);
        if first >= end {
            return Ok(None);
        }
        let has = |c: &str| need.contains(&c);
        let col = |c: &str, text: &str| -> String {
            if has(c) {
                text.to_string()
            } else if c == "dst_port" {
                "0".into()
            } else {
                "''".into()
            }
        };
        let select = [
            col(
                "cgroup",
                "(SELECT path FROM cgroup_paths WHERE id = cgroup)",
            ),
            col("comm", "comm"),
            col("dst_ip", "dst_ip"),
            col("dst_port", "dst_port"),
            col("protocol", "protocol"),
            col("verdict", "verdict"),
            col("policy", "policy"),
            col("country", "country"),
            col("continent", "continent"),
            col("dns_name", "dns_name"),
            col("cloud_region", "cloud_region"),
        ];
        let group: Vec<&str> = rollup.dims.iter().copied().filter(|d| has(d)).collect();
        let sql = format!(
            "SELECT {}, min(first_seen), max(last_seen), sum(count), sum(packets), sum(bytes), NULL FROM {} WHERE hour >= ? AND hour < ? AND {}{} HAVING count(*) > 0",
            select.join(", "),
            rollup.table,
            filter.sql,
            if group.is_empty() {
                String::new()
            } else {
                format!(" GROUP BY {}", group.join(", "))
            }
        );
        let mut stmt = store
            .conn
            .prepare_cached(&sql)
            .map_err(store.err("prepare the hourly flow query"))?;
        let mut values = vec![Value::Integer(first), Value::Integer(end)];
        values.extend(filter.values.iter().cloned());
        let rows: Vec<Flow> = stmt
            .query_map(params_from_iter(values), super::flow::flow_of)
            .and_then(|r| r.collect())
            .map_err(store.err("query the hourly flows"))?;
        Ok(Some((rows, (first, end))))
    };
    run().transpose()
}
