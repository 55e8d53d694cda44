//! report.html: the auditor's report, one self-contained page (inline
//! SVG charts drawn here, an inline stylesheet with print rules; nothing
//! fetched from anywhere). Every figure a chart or table shows carries its
//! value in a `data-` attribute, so tools (and our tests) read the numbers
//! back without scraping text. Every name from the node (cgroup paths,
//! process names, policy names, DNS names) goes through `esc`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
};

use serde_json::Value;

use super::summary::{dash, secs};
use crate::{
    events::{rfc3339_nanos, Event},
    store::{coverage::Coverage, query, query::Flow, Store},
};

/// The most rows of a table (destinations, drift alerts, gaps), workloads
/// and countries of the matrix, and countries of the chart; the rest are
/// counted ("and N more").
const ROWS: usize = 50;
const MATRIX_ROWS: usize = 20;
const MATRIX_COLUMNS: usize = 10;
const CHART_COUNTRIES: usize = 20;

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;

/// Verdicts in the order the report shows them.
pub const VERDICTS: [&str; 3] = ["allowed", "denied", "would_deny"];

fn verdict_index(v: &str) -> Option<usize> {
    VERDICTS.iter().position(|x| *x == v)
}

/// A destination address first contacted in the window.
#[derive(Debug, Clone)]
struct Dest {
    first_seen: i64,
    name: String,
    country: String,
    cloud_region: String,
    workload: String,
    process: String,
    verdicts: BTreeSet<String>,
}

/// What the report needs of the window's flows, summed as they stream by
/// (memory grows with the number of countries, workloads and addresses,
/// not with the flows).
#[derive(Debug, Default)]
pub struct Tally {
    /// Attempts per country and verdict (`VERDICTS` order).
    by_country: BTreeMap<String, [u64; 3]>,
    /// Attempts per country, cloud region and verdict.
    by_place: BTreeMap<String, BTreeMap<String, [u64; 3]>>,
    /// Attempts per workload and country, and whether any was refused.
    /// (Hashed: the page orders workloads and destinations itself.)
    matrix: ahash::AHashMap<String, BTreeMap<String, (u64, bool)>>,
    dests: ahash::AHashMap<String, Dest>,
    /// would_deny: flows, attempts, payload bytes, first and last seen.
    left: (u64, u64, u64, i64, i64),
    /// denied: attempts, first and last seen.
    denied: (u64, i64, i64),
    /// The last flow's cgroup path and pod, and the workload they name:
    /// flows come in path order, the name is made once per path.
    last: (String, String, String),
}

fn workload(f: &Flow) -> std::borrow::Cow<'_, str> {
    if f.pod_uid.is_empty() {
        std::borrow::Cow::Borrowed(&f.cgroup_path)
    } else {
        std::borrow::Cow::Owned(super::summary::workload_name(&f.cgroup_path, &f.pod_uid))
    }
}

fn widen(first: &mut i64, last: &mut i64, f: &Flow, empty: bool) {
    if empty {
        *first = f.first_seen;
        *last = f.last_seen;
    } else {
        *first = (*first).min(f.first_seen);
        *last = (*last).max(f.last_seen);
    }
}

/// `map[key]`, made empty where it is new: the key is copied only then
/// (a flow at a time, for every flow of an export's window).
fn at<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

impl Tally {
    pub fn add(&mut self, f: &Flow) {
        let Some(k) = verdict_index(&f.verdict) else {
            return;
        };
        let country = dash(&f.country);
        at(&mut self.by_country, country)[k] += f.count;
        at(at(&mut self.by_place, country), dash(&f.cloud_region))[k] += f.count;
        if self.last.0 != f.cgroup_path || self.last.1 != f.pod_uid {
            self.last = (
                f.cgroup_path.clone(),
                f.pod_uid.clone(),
                workload(f).into_owned(),
            );
        }
        let name = &self.last.2;
        if !self.matrix.contains_key(name) {
            self.matrix.insert(name.clone(), BTreeMap::new());
        }
        let row = self.matrix.get_mut(name).expect("inserted above");
        let cell = at(row, country);
        cell.0 += f.count;
        cell.1 |= k > 0;
        match k {
            1 => {
                let empty = self.denied.0 == 0;
                widen(&mut self.denied.1, &mut self.denied.2, f, empty);
                self.denied.0 += f.count;
            }
            2 => {
                let empty = self.left.0 == 0;
                widen(&mut self.left.3, &mut self.left.4, f, empty);
                self.left.0 += 1;
                self.left.1 += f.count;
                self.left.2 += f.bytes;
            }
            _ => {}
        }
        match self.dests.get_mut(&f.dst_ip) {
            Some(d) => {
                if f.first_seen < d.first_seen {
                    d.first_seen = f.first_seen;
                    d.workload.clone_from(&self.last.2);
                    d.process.clone_from(&f.comm);
                }
                if d.name.is_empty() {
                    d.name.clone_from(&f.dns_name);
                }
                if !d.verdicts.contains(&f.verdict) {
                    d.verdicts.insert(f.verdict.clone());
                }
            }
            None => {
                self.dests.insert(
                    f.dst_ip.clone(),
                    Dest {
                        first_seen: f.first_seen,
                        name: f.dns_name.clone(),
                        country: country.to_string(),
                        cloud_region: f.cloud_region.clone(),
                        workload: self.last.2.clone(),
                        process: f.comm.clone(),
                        verdicts: BTreeSet::from([f.verdict.clone()]),
                    },
                );
            }
        }
    }

    /// The first and last refused (denied or would_deny) attempt.
    fn refused_span(&self) -> Option<(i64, i64)> {
        match (self.denied.0 > 0, self.left.0 > 0) {
            (false, false) => None,
            (true, false) => Some((self.denied.1, self.denied.2)),
            (false, true) => Some((self.left.3, self.left.4)),
            (true, true) => Some((
                self.denied.1.min(self.left.3),
                self.denied.2.max(self.left.4),
            )),
        }
    }

    /// Forgets the destinations the store's flows name before `since`:
    /// what is left was first contacted in the window.
    pub fn keep_first_seen(&mut self, store: &Store, since: i64) -> anyhow::Result<()> {
        if self.dests.is_empty() || since <= 0 {
            return Ok(());
        }
        let mut stmt = store
            .conn
            .prepare("SELECT DISTINCT dst_ip FROM flows WHERE first_seen < ?1")?;
        let mut rows = stmt.query([since])?;
        while let Some(r) = rows.next()? {
            self.dests.remove(&r.get::<_, String>(0)?);
        }
        Ok(())
    }
}

/// Denied and would_deny attempts per time bucket.
#[derive(Debug, Default)]
pub struct OverTime {
    pub bucket_nanos: i64,
    /// (bucket start, denied, would_deny), oldest first.
    pub buckets: Vec<(i64, u64, u64)>,
}

/// The refused attempts of [since, until) per hour (a window or span of
/// refusals of three days at most), per day (400 days at most), else per
/// week, from the first refusal's bucket to the last's: each bucket is
/// read from the flows as `flows_each` gives them for it.
pub fn over_time(
    store: &Store,
    tally: &Tally,
    since: i64,
    until: i64,
    keep: &dyn Fn(&Event) -> bool,
    by_process: bool,
) -> anyhow::Result<OverTime> {
    let Some((first, last)) = tally.refused_span() else {
        return Ok(OverTime::default());
    };
    let span = (until - since).min(last - first + 1);
    let size = if span <= 3 * DAY {
        HOUR
    } else if span <= 400 * DAY {
        DAY
    } else {
        7 * DAY
    };
    let mut out = OverTime {
        bucket_nanos: size,
        buckets: Vec::new(),
    };
    let mut b = first - first.rem_euclid(size);
    while b <= last && b < until {
        let (from, to) = (b.max(since), (b + size).min(until));
        let (mut denied, mut would) = (0, 0);
        // Only the refusals are counted here: the allowed flows are not read.
        query::flows_each(
            store,
            from,
            to,
            keep,
            by_process,
            query::Rows::Refused,
            &mut |f| {
                match f.verdict.as_str() {
                    "denied" => denied += f.count,
                    "would_deny" => would += f.count,
                    _ => {}
                }
                Ok(())
            },
        )?;
        out.buckets.push((b, denied, would));
        b += size;
    }
    Ok(out)
}

pub struct Input<'a> {
    pub since: i64,
    pub until: i64,
    pub tally: &'a Tally,
    pub over_time: &'a OverTime,
    pub policy_index: &'a [Value],
    /// geoip.json's and cloud_ranges.json's objects.
    pub geoip: &'a Value,
    pub cloud: &'a Value,
    pub counters: &'a Value,
    pub coverage: &'a Coverage,
    pub drift: &'a [Event],
    pub drift_total: usize,
    /// The records of a filter only (the filter as given), or all.
    pub filter: &'a Value,
    /// Payload bytes are counted (not a by-process report).
    pub counted: bool,
    /// The node key that signed the bundle holding this page, if one does.
    pub signed_by: Option<&'a str>,
}

/// Text from the node as HTML text or attribute value: the five
/// characters HTML gives meaning escaped, control characters (a newline
/// among them) and the Unicode line separators and direction overrides
/// shown as `\xHH` / `\u{HHHH}`, so a name cannot end an element, open a
/// tag or reorder what follows it.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(o, "\\x{:02x}", u32::from(c));
            }
            '\u{2028}'
            | '\u{2029}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => {
                let _ = write!(o, "\\u{{{:04x}}}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o
}

fn t(n: i64) -> String {
    rfc3339_nanos(i128::from(n))
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut o = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.refused{background:#fde2e1}
.answer{font-size:1.15em;padding:.8em 1em;border-left:6px solid #2e7d32;background:#eef6ee}.answer.bad{border-color:#c62828;background:#fdecea}
.note{color:#555;font-size:.9em}.mono{font-family:monospace;word-break:break-all}
svg text{font-family:sans-serif;font-size:12px;fill:#222}.key span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
@page{size:A4;margin:14mm}
@media print{body{margin:0;max-width:none;font-size:10pt}section{break-inside:avoid-page}h2{break-after:avoid}svg{max-width:100%;height:auto}.answer{-webkit-print-color-adjust:exact;print-color-adjust:exact}td.refused,svg{-webkit-print-color-adjust:exact;print-color-adjust:exact}}";

/// Bar colours by verdict (`VERDICTS` order).
const COLOURS: [&str; 3] = ["#2e7d32", "#c62828", "#ef8f00"];

fn key_line(m: &mut String, which: &[usize]) {
    let _ = write!(m, "<p class=\"key\">");
    for &k in which {
        let _ = write!(
            m,
            "<span style=\"background:{}\"></span>{}",
            COLOURS[k], VERDICTS[k]
        );
    }
    let _ = writeln!(m, "</p>");
}

pub fn render(i: &Input<'_>) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Egress report {} to {}</title><style>{STYLE}</style></head><body>",
        t(i.since),
        t(i.until)
    );
    let _ = writeln!(
        m,
        "<h1>Egress report</h1><p class=\"note\" id=\"window\" data-since=\"{}\" data-until=\"{}\">Window {} to {}; made {} by egress-monitor {} from the node's store.{}</p>",
        i.since,
        i.until,
        t(i.since),
        t(i.until),
        t(crate::store::now_nanos()),
        env!("CARGO_PKG_VERSION"),
        match i.signed_by {
            Some(k) => format!(" Part of an evidence bundle signed by node key <span class=\"mono\">{}</span> (check it with <code>egress-monitor verify BUNDLE --pubkey KEY</code>).", esc(k)),
            None => " Not signed: an evidence bundle (<code>egress-monitor export</code>) holds this page, signed.".into(),
        }
    );
    if !i.filter.is_null() {
        let _ = writeln!(
            m,
            "<p class=\"note\" id=\"filter\"><b>Filtered</b>: only flows matching <span class=\"mono\">{}</span>.</p>",
            esc(&i.filter.to_string())
        );
    }
    answer(&mut m, i);
    countries(&mut m, i);
    timeline_chart(&mut m, i.over_time);
    matrix(&mut m, i.tally);
    first_seen(&mut m, i.tally);
    drift(&mut m, i.drift, i.drift_total);
    policies(&mut m, i);
    losses(&mut m, i);
    regulation(&mut m, i);
    let _ = writeln!(m, "</body></html>");
    m
}

/// The events lost or not stored in the window, and what of it no daemon
/// watched: (lost, watched share in percent).
fn losses_of(i: &Input<'_>) -> (i64, f64) {
    let g = &i.counters["gaps"];
    let lost: i64 = g
        .as_object()
        .map(|o| o.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0);
    let c = i.coverage;
    let share = if c.window_nanos > 0 {
        c.watched_nanos as f64 * 100.0 / c.window_nanos as f64
    } else {
        100.0
    };
    (lost, share)
}

/// Section 1: did data leave the allowed regions, and when.
fn answer(m: &mut String, i: &Input<'_>) {
    let (flows, attempts, bytes, first, last) = i.tally.left;
    let (denied, dfirst, dlast) = i.tally.denied;
    let mut text = if flows == 0 {
        "No connection outside the allowed regions was let through.".to_string()
    } else if i.counted {
        format!(
            "{} in monitor mode left the allowed regions ({} in {}), {}, first {}, last {}.",
            plural(attempts, "connection", "connections"),
            plural(attempts, "attempt", "attempts"),
            plural(flows, "flow", "flows"),
            plural(bytes, "byte", "bytes"),
            t(first),
            t(last)
        )
    } else {
        format!(
            "{} in monitor mode left the allowed regions, first {}, last {} (bytes are not counted per process).",
            plural(attempts, "connection", "connections"),
            t(first),
            t(last)
        )
    };
    if denied > 0 {
        let _ = write!(
            text,
            " {} to leave them {} blocked, first {}, last {}.",
            plural(denied, "attempt", "attempts"),
            if denied == 1 { "was" } else { "were" },
            t(dfirst),
            t(dlast)
        );
    }
    let (lost, share) = losses_of(i);
    let c = i.coverage;
    let _ = write!(
        text,
        " A daemon watched {} of the {} window ({share:.1}%); {} lost or not stored.",
        secs(c.watched_nanos),
        secs(c.window_nanos),
        plural(lost.max(0) as u64, "event", "events")
    );
    if lost > 0 || !c.complete() {
        text.push_str(" The record is incomplete for this window (section 6).");
    }
    let _ = writeln!(
        m,
        "<section><p class=\"answer{}\" id=\"answer\" data-left-flows=\"{flows}\" data-left-attempts=\"{attempts}\" data-left-bytes=\"{bytes}\" data-denied=\"{denied}\" data-watched-percent=\"{share:.1}\" data-lost=\"{lost}\">{}</p></section>",
        if flows > 0 { " bad" } else { "" },
        esc(&text)
    );
}

/// Section 2: attempts per country by verdict (a horizontal stacked bar
/// chart), and the table per country and cloud region.
fn countries(m: &mut String, i: &Input<'_>) {
    let _ = writeln!(
        m,
        "<section><h2>1. Destinations by country and cloud region</h2>"
    );
    let by = &i.tally.by_country;
    if by.is_empty() {
        let _ = writeln!(m, "<p>No connection attempt in the window.</p></section>");
        return;
    }
    let mut order: Vec<(&String, &[u64; 3])> = by.iter().collect();
    order.sort_by_key(|(c, v)| (std::cmp::Reverse(v.iter().sum::<u64>()), c.to_string()));
    let more = order.len().saturating_sub(CHART_COUNTRIES);
    order.truncate(CHART_COUNTRIES);
    let max = order
        .iter()
        .map(|(_, v)| v.iter().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (label, width, row) = (90.0, 820.0, 26.0);
    let height = row * order.len() as f64 + 10.0;
    key_line(m, &[0, 1, 2]);
    let _ = writeln!(
        m,
        "<svg id=\"chart-countries\" width=\"1000\" height=\"{height}\" viewBox=\"0 0 1000 {height}\" role=\"img\" aria-label=\"attempts per country by verdict\">"
    );
    for (n, (country, v)) in order.iter().enumerate() {
        let y = n as f64 * row + 5.0;
        let _ = writeln!(
            m,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label - 6.0,
            y + 15.0,
            esc(country)
        );
        let mut x = label;
        for k in 0..3 {
            let w = v[k] as f64 * width / max as f64;
            let _ = writeln!(
                m,
                "<rect class=\"bar\" data-country=\"{}\" data-verdict=\"{}\" data-count=\"{}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                esc(country),
                VERDICTS[k],
                v[k],
                row - 6.0,
                COLOURS[k],
                esc(country),
                VERDICTS[k],
                v[k]
            );
            x += w;
        }
        let _ = writeln!(
            m,
            "<text x=\"{:.1}\" y=\"{}\">{}</text>",
            x + 6.0,
            y + 15.0,
            v.iter()
                .map(|n| thousands(*n))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let _ = writeln!(m, "</svg>");
    if more > 0 {
        let _ = writeln!(
            m,
            "<p class=\"note\">and {more} more countries (in the table).</p>"
        );
    }
    let _ = writeln!(
        m,
        "<table id=\"table-places\"><tr><th>country</th><th>cloud region</th><th class=\"n\">allowed</th><th class=\"n\">denied</th><th class=\"n\">would_deny</th></tr>"
    );
    let places = i
        .tally
        .by_place
        .iter()
        .flat_map(|(country, clouds)| clouds.iter().map(move |(cloud, v)| (country, cloud, v)));
    for (country, cloud, v) in places {
        let _ = write!(m, "<tr><td>{}</td><td>{}</td>", esc(country), esc(cloud));
        for k in 0..3 {
            let _ = write!(
                m,
                "<td class=\"n\" data-country=\"{}\" data-cloud=\"{}\" data-verdict=\"{}\" data-count=\"{}\">{}</td>",
                esc(country),
                esc(cloud),
                VERDICTS[k],
                v[k],
                thousands(v[k])
            );
        }
        let _ = writeln!(m, "</tr>");
    }
    let _ = writeln!(m, "</table><p class=\"note\">Attempts: connections and datagrams the kernel judged, repeats included. A country is where the address is (the cloud provider's documented location where it publishes one); - is an address no database places.</p></section>");
}

/// Section 3: refused attempts per hour or day (vertical stacked bars).
fn timeline_chart(m: &mut String, o: &OverTime) {
    let _ = writeln!(
        m,
        "<section><h2>2. Denied and would-deny attempts over time</h2>"
    );
    if o.buckets.is_empty() {
        let _ = writeln!(
            m,
            "<p id=\"no-refusals\">No attempt was denied or would have been in the window.</p></section>"
        );
        return;
    }
    let unit = match o.bucket_nanos {
        HOUR => "hour",
        DAY => "day",
        _ => "week",
    };
    let max = o
        .buckets
        .iter()
        .map(|(_, d, w)| d + w)
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, plot_w, plot_h, top) = (50.0, 930.0, 200.0, 10.0);
    // At most 40 px a bar: one bucket is a bar, not the whole plot.
    let bw = (plot_w / o.buckets.len() as f64).min(40.0);
    key_line(m, &[1, 2]);
    let _ = writeln!(
        m,
        "<svg id=\"chart-time\" data-bucket=\"{unit}\" width=\"1000\" height=\"260\" viewBox=\"0 0 1000 260\" role=\"img\" aria-label=\"refused attempts per {unit}\">"
    );
    let _ = writeln!(
        m,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        top + plot_h,
        left + plot_w,
        top + plot_h,
        left - 4.0,
        top + plot_h,
        left - 4.0,
        top + 10.0,
        thousands(max)
    );
    for (n, (at, denied, would)) in o.buckets.iter().enumerate() {
        let x = left + n as f64 * bw;
        let hd = *denied as f64 * plot_h / max as f64;
        let hw = *would as f64 * plot_h / max as f64;
        let _ = writeln!(
            m,
            "<g class=\"bucket\" data-start=\"{}\" data-denied=\"{denied}\" data-would-deny=\"{would}\"><title>{} ({unit}): {denied} denied, {would} would_deny</title><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hd:.1}\" fill=\"{}\"/><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hw:.1}\" fill=\"{}\"/></g>",
            t(*at),
            t(*at),
            top + plot_h - hd,
            (bw - 1.0).max(0.5),
            COLOURS[1],
            top + plot_h - hd - hw,
            (bw - 1.0).max(0.5),
            COLOURS[2]
        );
    }
    let (first, last) = (o.buckets[0].0, o.buckets[o.buckets.len() - 1].0);
    let _ = write!(
        m,
        "<text x=\"{left}\" y=\"{}\">{}</text>",
        top + plot_h + 20.0,
        t(first)
    );
    // The last bucket's start under its bar, when it is another bar's.
    if o.buckets.len() > 1 {
        let _ = write!(
            m,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left + bw * o.buckets.len() as f64,
            top + plot_h + 40.0,
            t(last)
        );
    }
    let _ = writeln!(m, "</svg>");
    let _ = writeln!(
        m,
        "<p class=\"note\">One bar per {unit} (UTC), from the first refused attempt's to the last's.</p></section>"
    );
}

/// Section 4: workloads by destination country.
fn matrix(m: &mut String, tally: &Tally) {
    let _ = writeln!(
        m,
        "<section><h2>3. Workloads and destination countries</h2>"
    );
    if tally.matrix.is_empty() {
        let _ = writeln!(m, "<p>No workload made an attempt.</p></section>");
        return;
    }
    let mut cols: Vec<(&String, &[u64; 3])> = tally.by_country.iter().collect();
    cols.sort_by_key(|(c, v)| (std::cmp::Reverse(v.iter().sum::<u64>()), c.to_string()));
    let more_cols = cols.len().saturating_sub(MATRIX_COLUMNS);
    cols.truncate(MATRIX_COLUMNS);
    let mut rows: Vec<(&String, u64)> = tally
        .matrix
        .iter()
        .map(|(w, cs)| (w, cs.values().map(|c| c.0).sum()))
        .collect();
    rows.sort_by_key(|(w, n)| (std::cmp::Reverse(*n), w.to_string()));
    let more_rows = rows.len().saturating_sub(MATRIX_ROWS);
    rows.truncate(MATRIX_ROWS);
    let _ = write!(m, "<table id=\"matrix\"><tr><th>workload</th>");
    for (c, _) in &cols {
        let _ = write!(m, "<th class=\"n\">{}</th>", esc(c));
    }
    let _ = writeln!(m, "</tr>");
    for (w, _) in rows {
        let _ = write!(m, "<tr><td class=\"mono\">{}</td>", esc(w));
        for (c, _) in &cols {
            let (n, refused) = tally.matrix[w].get(*c).copied().unwrap_or((0, false));
            let _ = write!(
                m,
                "<td class=\"n{}\" data-workload=\"{}\" data-country=\"{}\" data-count=\"{n}\">{}</td>",
                if refused { " refused" } else { "" },
                esc(w),
                esc(c),
                if n == 0 { String::new() } else { thousands(n) }
            );
        }
        let _ = writeln!(m, "</tr>");
    }
    let _ = writeln!(m, "</table>");
    let mut notes = Vec::new();
    if more_rows > 0 {
        notes.push(format!("and {more_rows} more workloads"));
    }
    if more_cols > 0 {
        notes.push(format!("and {more_cols} more countries"));
    }
    let _ = writeln!(
        m,
        "<p class=\"note\">Attempts per workload (its pod, else its cgroup) and country; shaded: some were denied or would have been.{}</p></section>",
        if notes.is_empty() {
            String::new()
        } else {
            format!(" Largest shown; {}.", notes.join(", "))
        }
    );
}

/// Section 5a: destinations first contacted in the window.
fn first_seen(m: &mut String, tally: &Tally) {
    let _ = writeln!(
        m,
        "<section><h2>4. First-seen destinations and drift alerts</h2><h3>Destinations first contacted in the window</h3>"
    );
    if tally.dests.is_empty() {
        let _ = writeln!(m, "<p id=\"first-seen\" data-count=\"0\">None: every destination of the window was contacted before it.</p>");
        return;
    }
    let mut list: Vec<(&String, &Dest)> = tally.dests.iter().collect();
    list.sort_by_key(|(ip, d)| (d.first_seen, ip.to_string()));
    let _ = writeln!(
        m,
        "<table id=\"first-seen\" data-count=\"{}\"><tr><th>first contact</th><th>address</th><th>name</th><th>country</th><th>cloud region</th><th>first workload</th><th>process</th><th>verdicts</th></tr>",
        list.len()
    );
    for (ip, d) in list.iter().take(ROWS) {
        let _ = writeln!(
            m,
            "<tr data-address=\"{}\"><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            esc(ip),
            t(d.first_seen),
            esc(ip),
            esc(&d.name),
            esc(&d.country),
            esc(&d.cloud_region),
            esc(&d.workload),
            esc(&d.process),
            esc(&d.verdicts.iter().cloned().collect::<Vec<_>>().join(", "))
        );
    }
    let _ = writeln!(m, "</table>");
    if list.len() > ROWS {
        let _ = writeln!(
            m,
            "<p class=\"note\">and {} more (every flow is in flows.csv of an evidence bundle).</p>",
            list.len() - ROWS
        );
    }
    let _ = writeln!(m, "<p class=\"note\">Addresses no flow of the store names before the window (as far as retention keeps flows).</p>");
}

/// Section 5b: the drift alerts.
fn drift(m: &mut String, alerts: &[Event], total: usize) {
    let _ = writeln!(m, "<h3>Drift alerts</h3>");
    if total == 0 {
        let _ = writeln!(m, "<p id=\"drift\" data-count=\"0\">No drift alert in the window (a policy with <code>spec.baseline</code> raises one at a workload's first contact with a destination outside its baseline).</p></section>");
        return;
    }
    let _ = writeln!(
        m,
        "<table id=\"drift\" data-count=\"{total}\"><tr><th>first contact</th><th>workload</th><th>new</th><th>destination</th><th>attempt</th><th>policy</th><th>baseline</th><th>the baseline knew</th></tr>"
    );
    for e in alerts {
        let Some(d) = &e.drift else { continue };
        let workload = super::summary::workload_name(&e.cgroup_path, &e.pod_uid);
        let _ = writeln!(
            m,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{} {}</td><td class=\"mono\">{}:{}/{}</td><td>{}</td><td>{}</td><td>{} <span class=\"mono\">{}</span></td><td>{}{}</td></tr>",
            t(e.unix_nanos as i64),
            esc(&workload),
            esc(&d.kind),
            esc(&d.value),
            esc(&e.dst_ip),
            e.dst_port,
            esc(e.protocol),
            esc(&d.attempt),
            esc(&e.policy),
            esc(&d.baseline),
            esc(d.baseline_sha256.get(..16).unwrap_or(&d.baseline_sha256)),
            if d.listed { "" } else { "(all workloads) " },
            esc(&d.known.join(", "))
        );
    }
    let _ = writeln!(m, "</table>");
    if total > alerts.len() {
        let _ = writeln!(
            m,
            "<p class=\"note\">and {} more drift alerts (events with verdict drift).</p>",
            total - alerts.len()
        );
    }
    let _ = writeln!(m, "</section>");
}

/// An identity object (a GeoIP database's, a cloud snapshot's) as
/// `key: value` pairs.
fn identity(v: &Value) -> String {
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{}: {}", esc(k), esc(&v))
            })
            .collect::<Vec<_>>()
            .join("<br>"),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// Section 6: policies, GeoIP and cloud-range snapshots in force.
fn policies(m: &mut String, i: &Input<'_>) {
    let _ = writeln!(
        m,
        "<section><h2>5. Policies, GeoIP database and cloud ranges in force</h2><table id=\"policies\"><tr><th>in force from</th><th>policy</th><th>mode</th><th>sha256</th><th>file</th></tr>"
    );
    for set in i.policy_index {
        for p in set["policies"].as_array().into_iter().flatten() {
            let s = |k: &str| esc(p[k].as_str().unwrap_or(""));
            let _ = writeln!(
                m,
                "<tr data-policy=\"{}\" data-sha256=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                s("name"),
                s("sha256"),
                esc(set["effective_from"].as_str().unwrap_or("")),
                s("name"),
                s("mode"),
                s("sha256"),
                s("file")
            );
        }
    }
    let _ = writeln!(m, "</table>");
    let list =
        |m: &mut String, id: &str, what: &str, v: &Value, key: &str, from: &str, item: &str| {
            let _ = writeln!(
                m,
                "<h3>{what}</h3><table id=\"{id}\"><tr><th>in use from</th><th>identity</th></tr>"
            );
            let items = v[key].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                let _ = writeln!(m, "<tr><td colspan=\"2\">none recorded</td></tr>");
            }
            for e in items {
                let _ = writeln!(
                    m,
                    "<tr><td>{}</td><td class=\"mono\">{}</td></tr>",
                    esc(e[from].as_str().unwrap_or("")),
                    identity(&e[item])
                );
            }
            let _ = writeln!(m, "</table>");
        };
    list(
        m,
        "geoip",
        "GeoIP databases",
        i.geoip,
        "databases",
        "in_use_from",
        "database",
    );
    list(
        m,
        "cloud-ranges",
        "Cloud-range snapshots",
        i.cloud,
        "snapshots",
        "in_force_from",
        "snapshot",
    );
    let _ = writeln!(m, "</section>");
}

/// Section 7: losses, gaps and coverage.
fn losses(m: &mut String, i: &Input<'_>) {
    let c = i.coverage;
    let (lost, share) = losses_of(i);
    let _ = writeln!(
        m,
        "<section><h2>6. Losses and gaps</h2><p id=\"coverage\" data-watched-nanos=\"{}\" data-window-nanos=\"{}\">A daemon with its programs attached watched {} of the {} window ({share:.1}%), as its signed heartbeats show.{}</p>",
        c.watched_nanos,
        c.window_nanos,
        secs(c.watched_nanos),
        secs(c.window_nanos),
        if c.unsigned_tail_nanos > 0 {
            format!(
                " The last {} come after the running daemon's last heartbeat and are not yet signed by one.",
                secs(c.unsigned_tail_nanos)
            )
        } else {
            String::new()
        }
    );
    let spans: Vec<_> = c.unwatched().collect();
    if !spans.is_empty() {
        let _ = writeln!(
            m,
            "<table id=\"unwatched\"><tr><th>not watched from</th><th>to</th><th>length</th><th>why</th></tr>"
        );
        for s in spans.iter().take(ROWS) {
            let _ = writeln!(
                m,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                t(s.since_unix_nanos),
                t(s.until_unix_nanos),
                secs(s.nanos()),
                esc(&s.why)
            );
        }
        let _ = writeln!(m, "</table>");
        if spans.len() > ROWS {
            let _ = writeln!(
                m,
                "<p class=\"note\">and {} more spans.</p>",
                spans.len() - ROWS
            );
        }
    }
    let _ = write!(m, "<table id=\"gap-totals\" data-lost=\"{lost}\"><tr>");
    let totals = i.counters["gaps"].as_object().cloned().unwrap_or_default();
    for k in totals.keys() {
        let _ = write!(m, "<th class=\"n\">{}</th>", esc(k));
    }
    let _ = write!(m, "</tr><tr>");
    for (k, v) in &totals {
        let _ = write!(
            m,
            "<td class=\"n\" data-gap=\"{}\" data-count=\"{}\">{}</td>",
            esc(k),
            v.as_i64().unwrap_or(0),
            v.as_i64().unwrap_or(0)
        );
    }
    let _ = writeln!(m, "</tr></table>");
    let records = i.counters["gap_records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if records.is_empty() {
        let _ = writeln!(m, "<p>No gap recorded in the window.</p>");
    } else {
        let _ = writeln!(
            m,
            "<table id=\"gaps\"><tr><th>at</th><th>kind</th><th class=\"n\">count</th><th>detail</th></tr>"
        );
        for g in records.iter().take(ROWS) {
            let _ = writeln!(
                m,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(g["at"].as_str().unwrap_or("")),
                esc(g["kind"].as_str().unwrap_or("")),
                g["count"].as_i64().unwrap_or(0),
                esc(g["detail"].as_str().unwrap_or(""))
            );
        }
        let _ = writeln!(m, "</table>");
        if records.len() > ROWS {
            let _ = writeln!(
                m,
                "<p class=\"note\">and {} more gap records.</p>",
                records.len() - ROWS
            );
        }
    }
    let _ = writeln!(m, "</section>");
}

/// Section 8: GDPR Art. 30/44 and NIS2 Art. 23, with the deadlines of an
/// incident that began at the window's first refused contact.
fn regulation(m: &mut String, i: &Input<'_>) {
    let _ = writeln!(
        m,
        "<section><h2>7. GDPR Art. 30 / 44 and NIS2 Art. 23</h2><p>Art. 30 (records of processing): the policies in force with their digests are in section 5; the node's record of every judged connection is the evidence bundle. Art. 44 (transfers): {}.</p>",
        if i.tally.left.0 == 0 {
            "no connection outside the allowed regions was let through".to_string()
        } else {
            format!(
                "{} let through outside the allowed regions by a policy in monitor mode, each a possible transfer to review",
                plural(i.tally.left.0, "flow was", "flows were")
            )
        }
    );
    let Some((first, _)) = i.tally.refused_span() else {
        let _ = writeln!(m, "<p id=\"incident\" data-start=\"\">No attempt was denied or would have been: no incident timeline for this window.</p></section>");
        return;
    };
    let marks = [
        ("start", "first refused or would-deny contact", first),
        (
            "early-warning",
            "NIS2 Art. 23(4)(a): early warning within 24 h",
            first + 24 * HOUR,
        ),
        (
            "notification",
            "NIS2 Art. 23(4)(b) and GDPR Art. 33: incident notification within 72 h",
            first + 72 * HOUR,
        ),
    ];
    let _ = writeln!(
        m,
        "<p>If this window is an incident, its deadlines, counted from the first refused or would-deny contact (the earliest moment one could have become aware of it; the legal clocks start at awareness of a significant incident or a personal data breach):</p>"
    );
    let _ = writeln!(
        m,
        "<svg id=\"incident\" data-start=\"{first}\" width=\"1000\" height=\"110\" viewBox=\"0 0 1000 110\" role=\"img\" aria-label=\"incident deadlines\"><line x1=\"40\" y1=\"40\" x2=\"960\" y2=\"40\" stroke=\"#888\" stroke-width=\"2\"/>"
    );
    for (n, (id, _, at)) in marks.iter().enumerate() {
        // 0 h, 24 h and 72 h on one scale.
        let x = 40.0 + 920.0 * ((at - first) as f64 / (72 * HOUR) as f64);
        let anchor = ["start", "middle", "end"][n];
        let _ = writeln!(
            m,
            "<g class=\"deadline\" data-deadline=\"{id}\" data-at=\"{at}\"><circle cx=\"{x:.1}\" cy=\"40\" r=\"7\" fill=\"{}\"/><text x=\"{x:.1}\" y=\"25\" text-anchor=\"{anchor}\">{}</text><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text></g>",
            COLOURS[n.min(2)],
            ["T0", "T0 + 24 h", "T0 + 72 h"][n],
            62 + 18 * n,
            t(*at)
        );
    }
    let _ = writeln!(m, "</svg><ul>");
    for (id, what, at) in marks {
        let _ = writeln!(m, "<li data-deadline=\"{id}\">{}: {what}</li>", t(at));
    }
    let _ = writeln!(
        m,
        "<li>{}: NIS2 Art. 23(4)(d): final report within one month of the notification</li></ul></section>",
        t(first + 72 * HOUR + 30 * DAY)
    );
}
