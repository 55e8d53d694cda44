//! summary.md: the page an auditor reads first.
use std::{collections::BTreeMap, fmt::Write};

use serde_json::Value;

use crate::{
    events::rfc3339_nanos,
    store::{coverage::Coverage, query::Flow},
};

pub struct Input<'a> {
    pub since: i64,
    pub until: i64,
    /// How many records the bundle holds.
    pub exported: usize,
    pub flows: &'a FlowDigest,
    pub policy_index: &'a [Value],
    /// The first drift alerts of the export (at most `TABLE_ROWS`), and
    /// how many it holds.
    pub drift: &'a [crate::events::Event],
    pub drift_total: usize,
    pub counters: &'a Value,
    pub coverage: &'a Coverage,
    pub complete: bool,
    /// False for flows made from the events of selected processes
    /// (`--by-process`): packets and bytes are counted per flow in the
    /// kernel, not per process, so such flows carry none.
    pub counted: bool,
    pub public_key: &'a str,
}

/// What left the host for a flow that was not blocked, as far as the
/// kernel's counters for it tell. The kernel records attempts (`count`)
/// and the packets and transport payload bytes its egress program saw for
/// the flow; it does not record whether a TCP handshake completed. So:
/// payload bytes are data that left the host (for TCP, payload follows an
/// established connection, or rides a Fast Open SYN); a TCP flow without
/// payload and with at most one packet per attempt never connected (a
/// handshake takes two packets from this side, the SYN and the ACK of the
/// reply); more packets without payload may be a handshake and a close,
/// or an unanswered SYN sent again: whether it connected is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Bytes(u64),
    NeverConnected,
    /// Packets, none with payload; for TCP whether it connected is unknown.
    NoPayload(u64),
    /// No packet at all (a datagram socket that never sent, or a connect
    /// that failed before its first packet).
    Nothing,
    /// Flows of `--by-process`, which carry no counts.
    NotCounted,
}

impl Sent {
    pub(crate) fn of(f: &Flow, counted: bool) -> Self {
        if !counted {
            Sent::NotCounted
        } else if f.bytes > 0 {
            Sent::Bytes(f.bytes)
        } else if f.protocol == "tcp" && f.packets <= f.count {
            Sent::NeverConnected
        } else if f.packets == 0 {
            Sent::Nothing
        } else {
            Sent::NoPayload(f.packets)
        }
    }

    /// The words of the summary's "what happened" column for a flow of
    /// `verdict`.
    pub(crate) fn words(self, verdict: &str, protocol: &str) -> String {
        let how = match verdict {
            "denied" => return "blocked".into(),
            "would_deny" => "not blocked (monitor), ",
            _ => "",
        };
        match self {
            Sent::Bytes(n) => format!("{how}{n} bytes sent"),
            Sent::NeverConnected if verdict == "would_deny" => "not blocked, never connected".into(),
            Sent::NeverConnected => "never connected".into(),
            Sent::NoPayload(p) if protocol == "tcp" => format!(
                "{how}0 bytes sent ({p} packets without payload: whether it connected is not recorded)"
            ),
            Sent::NoPayload(p) => format!("{how}0 bytes sent ({p} packets without payload)"),
            Sent::Nothing => format!("{how}nothing sent"),
            Sent::NotCounted => format!("{how}bytes not counted per process"),
        }
    }
}

/// What summary.md needs of the window's flows, gathered as they stream
/// by: sums by country, and the flows it lists (those not allowed, and those
/// a CIDR exception allowed); the rest is only counted.
#[derive(Debug, Default)]
pub struct FlowDigest {
    /// Attempts allowed, denied, would_deny; payload bytes of would_deny.
    by_country: BTreeMap<String, [u64; 4]>,
    refused: Vec<Flow>,
    by_cidr: Vec<Flow>,
}

impl FlowDigest {
    /// Adds a flow; `by_cidr` holds (destination, cgroup path) of the
    /// exported records a CIDR rule allowed.
    pub fn add(&mut self, f: Flow, by_cidr: &std::collections::HashSet<(String, String)>) {
        let country = dash(&f.country);
        if !self.by_country.contains_key(country) {
            self.by_country.insert(country.to_string(), [0; 4]);
        }
        let c = self.by_country.get_mut(country).expect("inserted above");
        let k = match f.verdict.as_str() {
            "allowed" => 0,
            "denied" => 1,
            _ => 2,
        };
        c[k] += f.count;
        if k == 2 {
            c[3] += f.bytes;
        }
        if f.verdict != "allowed" {
            self.refused.push(f);
        } else if !f.country.is_empty()
            && !by_cidr.is_empty()
            && by_cidr.contains(&(f.dst_ip.clone(), f.cgroup_path.clone()))
        {
            self.by_cidr.push(f);
        }
    }

    fn sorted(list: &[Flow]) -> Vec<&Flow> {
        let mut v: Vec<&Flow> = list.iter().collect();
        v.sort_by_key(|f| f.first_seen);
        v
    }
}

fn t(n: i64) -> String {
    rfc3339_nanos(i128::from(n))
}

pub(crate) fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The destination, escaped (`md`) as the page shows it.
fn dest(f: &Flow) -> String {
    md(&if f.dst_ip.contains(':') {
        format!("[{}]:{}/{}", f.dst_ip, f.dst_port, f.protocol)
    } else {
        format!("{}:{}/{}", f.dst_ip, f.dst_port, f.protocol)
    })
}

/// Text from the store (a workload's comm, a cgroup path, a policy name,
/// a gap's detail...) as Markdown that shows it literally, on one line,
/// in a table cell or in running text: whatever a workload calls itself
/// cannot end a table cell, start a row or a heading, or make a link, code,
/// HTML or emphasis. Markdown's active characters are escaped with a
/// backslash; control characters (a newline among them) and the Unicode
/// line separators and direction overrides are shown as `\xHH` or
/// `\u{HHHH}`. The exact bytes are in events.jsonl and flows.csv.
pub(crate) fn md(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' | '|' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '&' | '!' | '~' | '$' => {
                o.push('\\');
                o.push(c);
            }
            // Written `\\x0a`: an escaped backslash, then the code, so
            // that the page shows `\x0a`.
            c if c.is_control() => {
                let _ = write!(o, "\\\\x{:02x}", u32::from(c));
            }
            '\u{2028}'
            | '\u{2029}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => {
                let _ = write!(o, "\\\\u{{{:04x}}}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o
}

/// A digest in a code span when it is one (hex), else escaped text.
pub(crate) fn code(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("`{s}`")
    } else {
        md(s)
    }
}

pub fn render(i: &Input<'_>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Egress evidence: {} to {}\n", t(i.since), t(i.until));
    let _ = writeln!(
        m,
        "Signed by node key `{}`. Check this bundle with `egress-monitor verify BUNDLE --pubkey {}`; every file, the record chain and the signature are checked.\n",
        i.public_key, i.public_key
    );
    if !i.complete {
        let _ = writeln!(m, "**Filtered export**: only records matching the filter in manifest.json are included; the chain (chain.json) still covers every record of the window.\n");
    }
    let d = &i.counters["decisions_in_window"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let _ = writeln!(
        m,
        "Decisions in the window: {} allowed, {} denied, {} would have been denied (monitor mode); {} records exported.\n",
        n("allowed"),
        n("denied"),
        n("would_deny"),
        i.exported
    );
    let g = &i.counters["gaps"];
    let gn = |k: &str| g[k].as_i64().unwrap_or(0);
    let not_stored =
        gn("lost_for_store") + gn("store_degraded") + gn("lost_at_restart") + gn("lost_in_daemon");
    let denials_lost = gn("denials_lost_in_kernel");
    let in_kernel = gn("lost_in_kernel") + denials_lost;
    let lost = in_kernel + not_stored + gn("store_reset");
    coverage_section(&mut m, i.coverage);
    let _ = writeln!(
        m,
        "Completeness: {in_kernel} events lost in the kernel (ring buffer full; {denials_lost} of them denied, would-deny or unclassified decisions), {} not stored (store degraded, or read by a daemon killed before it stored them), {} store resets. {}\n",
        not_stored,
        gn("store_reset"),
        match (lost == 0, i.coverage.complete()) {
            (true, true) => "The record is complete for this window.",
            (false, _) => "**The record is incomplete for this window; see counters.json.**",
            (true, false) => "**The record is incomplete for this window: parts of it were not watched (above).**",
        }
    );

    // Transfers by country.
    let by_country = &i.flows.by_country;
    let refused = FlowDigest::sorted(&i.flows.refused);
    let _ = writeln!(m, "## Connections by destination country\n");
    let _ = writeln!(
        m,
        "| country | allowed | denied | would_deny (not blocked) | bytes sent by would_deny |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for (c, v) in by_country {
        let sent = if i.counted {
            v[3].to_string()
        } else {
            "not counted".into()
        };
        let _ = writeln!(m, "| {} | {} | {} | {} | {sent} |", md(c), v[0], v[1], v[2]);
    }

    // Denied attempts.
    let _ = writeln!(m, "\n## Denied attempts (blocked before a packet left)\n");
    let denied: Vec<&Flow> = refused
        .iter()
        .copied()
        .filter(|f| f.verdict == "denied")
        .collect();
    flow_table(&mut m, &denied, i.counted);

    // Outside the allowed regions.
    let _ = writeln!(m, "\n{ART44}\n");
    let left: Vec<&Flow> = refused
        .iter()
        .copied()
        .filter(|f| f.verdict == "would_deny")
        .collect();
    let _ = writeln!(m, "{}\n", art44_account(&left, i.counted));
    flow_table(&mut m, &left, i.counted);
    let _ = writeln!(
        m,
        "\nAllowed by a CIDR exception (review that each exception is intended):\n"
    );
    let cidr = FlowDigest::sorted(&i.flows.by_cidr);
    flow_table(&mut m, &cidr, i.counted);
    drift_section(&mut m, i.drift, i.drift_total);

    // Policy record.
    let _ = writeln!(m, "\n## Policy record (GDPR Art. 30)\n");
    let _ = writeln!(
        m,
        "| in force from | policy | mode | sha256 | file |\n| --- | --- | --- | --- | --- |"
    );
    for set in i.policy_index {
        for p in set["policies"].as_array().into_iter().flatten() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                md(set["effective_from"].as_str().unwrap_or("")),
                md(p["name"].as_str().unwrap_or("")),
                md(p["mode"].as_str().unwrap_or("")),
                code(p["sha256"].as_str().unwrap_or("")),
                md(p["file"].as_str().unwrap_or(""))
            );
        }
    }

    // Timeline.
    let _ = writeln!(m, "\n## Timeline (for a NIS2 incident report)\n");
    let mut tl: Vec<(i64, String)> = vec![(i.since, "window starts".into())];
    for set in i.policy_index {
        let at = set["effective_from_unix_nanos"].as_i64().unwrap_or(0);
        let names: Vec<String> = set["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} ({})",
                    md(p["name"].as_str().unwrap_or("")),
                    md(p["mode"].as_str().unwrap_or(""))
                )
            })
            .collect();
        tl.push((
            at.max(i.since),
            format!("policy set in force: {}", names.join(", ")),
        ));
    }
    // One line per workload, destination address and hour, however many
    // processes and ports: the full list is flows.csv.
    let mut hours: BTreeMap<HourKey, HourSum> = BTreeMap::new();
    for f in &refused {
        let hour = f.first_seen - f.first_seen.rem_euclid(3_600_000_000_000);
        let e = hours
            .entry((hour, &f.verdict, &f.cgroup_path, &f.dst_ip, &f.country))
            .or_insert((f.first_seen, f.last_seen, 0, 0, 0));
        e.0 = e.0.min(f.first_seen);
        e.1 = e.1.max(f.last_seen);
        e.2 += f.count;
        e.3 += 1;
        e.4 += f.bytes;
    }
    let shown = hours.len().min(TIMELINE_LINES);
    for ((_, verdict, cgroup, ip, country), (first, last, count, flows, bytes)) in
        hours.iter().take(TIMELINE_LINES)
    {
        let sent = if *verdict == "would_deny" && i.counted {
            format!(", {bytes} bytes sent")
        } else {
            String::new()
        };
        tl.push((
            *first,
            format!(
                "{}: {} to {} {} ({count} in {flows} flow{}{sent}, last {})",
                md(verdict),
                md(cgroup),
                md(ip),
                md(dash(country)),
                if *flows == 1 { "" } else { "s" },
                t(*last)
            ),
        ));
    }
    if hours.len() > shown {
        tl.push((
            i.until,
            format!(
                "... and {} more (workload, destination, hour) entries: see flows.csv",
                hours.len() - shown
            ),
        ));
    }
    for e in i.drift {
        if let Some(d) = &e.drift {
            tl.push((
                e.unix_nanos as i64,
                format!(
                    "drift: {} first reached {} {} ({}), outside baseline {} of policy {}",
                    md(&e.cgroup_path),
                    md(&d.kind),
                    md(&d.value),
                    md(&d.attempt),
                    md(&d.baseline),
                    md(&e.policy)
                ),
            ));
        }
    }
    for gap in i.counters["gap_records"].as_array().into_iter().flatten() {
        tl.push((
            0,
            format!(
                "{} {}: {} ({})",
                md(gap["at"].as_str().unwrap_or("")),
                md(gap["kind"].as_str().unwrap_or("")),
                md(&gap["count"].to_string()),
                md(gap["detail"].as_str().unwrap_or(""))
            ),
        ));
    }
    tl.push((i.until, "window ends".into()));
    tl.sort_by_key(|(at, _)| *at);
    for (at, what) in tl {
        if at == 0 {
            let _ = writeln!(m, "- {what}");
        } else {
            let _ = writeln!(m, "- {} {what}", t(at));
        }
    }
    m
}

/// (hour, verdict, cgroup, destination address, country) of the timeline.
type HourKey<'a> = (i64, &'a str, &'a str, &'a str, &'a str);
/// (first seen, last seen, connections, flows, payload bytes) of one
/// timeline line.
type HourSum = (i64, i64, u64, usize, u64);

/// The most rows a flow table or the timeline shows; the rest are in
/// flows.csv, so the page stays readable for a window of any size.
pub const TABLE_ROWS: usize = 50;
const TIMELINE_LINES: usize = 200;

/// A workload as the pages name it: its pod, else its cgroup path.
pub(crate) fn workload_name(cgroup_path: &str, pod_uid: &str) -> String {
    if pod_uid.is_empty() {
        cgroup_path.to_string()
    } else {
        format!("pod {pod_uid}")
    }
}

/// The drift alerts: first contacts of workloads with destinations outside
/// their policy's baseline.
fn drift_section(m: &mut String, alerts: &[crate::events::Event], total: usize) {
    let _ = writeln!(m, "\n{DRIFT}\n");
    if total == 0 {
        let _ = writeln!(
            m,
            "No drift alert in the window (a policy with `spec.baseline` raises one at the first contact of a workload with a destination outside its baseline)."
        );
        return;
    }
    let _ = writeln!(
        m,
        "{total} drift alert{} in the window: each is the first contact of a workload with a destination outside its policy's baseline (later contacts raise none; they are in flows.csv).\n",
        if total == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        m,
        "| first contact | workload | new | at | attempt | policy | baseline (sha256) | baseline knows |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for e in alerts {
        let Some(d) = &e.drift else { continue };
        let workload = workload_name(&e.cgroup_path, &e.pod_uid);
        let _ = writeln!(
            m,
            "| {} | {} | {} {} | {}:{}/{} | {} | {} | {} ({}) | {} |",
            t(e.unix_nanos as i64),
            md(&workload),
            md(&d.kind),
            md(&d.value),
            md(&e.dst_ip),
            e.dst_port,
            md(e.protocol),
            md(&d.attempt),
            md(&e.policy),
            md(&d.baseline),
            code(d.baseline_sha256.get(..16).unwrap_or(&d.baseline_sha256)),
            md(&if d.listed {
                d.known.join(", ")
            } else {
                format!("(not listed; all workloads) {}", d.known.join(", "))
            }),
        );
    }
    if total > alerts.len() {
        let _ = writeln!(
            m,
            "\n... and {} more: every alert is in events.jsonl (`\"verdict\":\"drift\"`).",
            total - alerts.len()
        );
    }
}

pub const DRIFT: &str = "## Drift from baselines";

/// The account above the Art. 44 table: how many of the flows a policy in
/// monitor mode let through sent data, never connected, or sent no
/// payload, and how that is known.
fn art44_account(left: &[&Flow], counted: bool) -> String {
    let intro = "Connections a policy judged outside its allowed regions that were let through because the policy was in monitor mode.";
    if left.is_empty() {
        return intro.into();
    }
    if !counted {
        return format!("{intro} This export is by process: packets and bytes are counted per flow, not per process, so whether data left is not shown here; an export of the whole window shows it.");
    }
    let (mut sent, mut bytes, mut never, mut unknown) = (0, 0u64, 0, 0);
    for f in left {
        match Sent::of(f, true) {
            Sent::Bytes(n) => {
                sent += 1;
                bytes += n;
            }
            Sent::NeverConnected | Sent::Nothing => never += 1,
            Sent::NoPayload(_) => unknown += 1,
            Sent::NotCounted => {}
        }
    }
    format!(
        "{intro} Of these {} flows, {sent} sent {bytes} bytes of data out of the host (each a transfer to review), {never} never connected or sent nothing, {unknown} sent packets without data (whether they connected is not recorded).\n\nWhat happened is read from the kernel's counters of each flow: bytes sent are the transport payload the host's egress program let out; a TCP flow without payload and with at most one packet per attempt never completed a handshake. Counters reach the store each second and count toward the time of the flow's last packet.",
        left.len()
    )
}

fn flow_table(m: &mut String, all: &[&Flow], counted: bool) {
    if all.is_empty() {
        let _ = writeln!(m, "None.");
        return;
    }
    // The largest first, then by first seen.
    let mut flows: Vec<&Flow> = all.to_vec();
    flows.sort_by_key(|f| (std::cmp::Reverse(f.count), f.first_seen));
    let more = flows.len().saturating_sub(TABLE_ROWS);
    flows.truncate(TABLE_ROWS);
    let _ = writeln!(m, "| first seen | last seen | count | what happened | cgroup | process | destination | country | policy |\n| --- | --- | ---: | --- | --- | --- | --- | --- | --- |");
    for f in flows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t(f.first_seen),
            t(f.last_seen),
            f.count,
            Sent::of(f, counted).words(&f.verdict, &f.protocol),
            md(&f.cgroup_path),
            md(&process(f)),
            dest(f),
            md(dash(&f.country)),
            md(&f.policy)
        );
    }
    if more > 0 {
        let _ = writeln!(
            m,
            "\n... and {more} more flows ({} in all; the {TABLE_ROWS} largest are shown, every one is in flows.csv).",
            all.len()
        );
    }
}

/// A flow's process: its comm, and its executable where known.
fn process(f: &Flow) -> String {
    if f.exe.is_empty() {
        f.comm.clone()
    } else {
        format!("{} ({})", f.comm, f.exe)
    }
}

pub(crate) fn secs(n: i64) -> String {
    let s = n / 1_000_000_000;
    match s {
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        0 => format!("{} ms", n / 1_000_000),
        s => format!("{}.{:01} s", s, n % 1_000_000_000 / 100_000_000),
    }
}

/// What of the window a daemon watched, from its signed heartbeats.
fn coverage_section(m: &mut String, c: &Coverage) {
    let share = if c.window_nanos > 0 {
        c.watched_nanos as f64 * 100.0 / c.window_nanos as f64
    } else {
        100.0
    };
    let _ = writeln!(
        m,
        "Coverage: a daemon with its programs attached watched {} of the {} window ({share:.1}%), as its signed heartbeats (checkpoints.json) show.",
        secs(c.watched_nanos),
        secs(c.window_nanos)
    );
    if c.unsigned_tail_nanos > 0 {
        let _ = writeln!(
            m,
            "The last {} of the window come after the running daemon's last heartbeat and are not yet signed by one.",
            secs(c.unsigned_tail_nanos)
        );
    }
    if !c.complete() {
        let _ = writeln!(
            m,
            "\n**Not watched** (no daemon recorded decisions in these spans; programs left pinned by a stopped or killed daemon go on enforcing, unrecorded; detached programs do not):\n\n| from | to | length | why |\n| --- | --- | ---: | --- |"
        );
        for s in c.unwatched() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                t(s.since_unix_nanos),
                t(s.until_unix_nanos),
                secs(s.nanos()),
                md(&s.why)
            );
        }
    }
    let _ = writeln!(m);
}

// Reading summary.md back, for tests and tools.

/// The table rows (header and delimiter left out) of summary.md's section
/// under `heading`.
pub fn table_rows<'a>(md: &'a str, heading: &str) -> Vec<&'a str> {
    md.lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .collect()
}

/// The cells of a Markdown table row, split at its unescaped pipes.
pub fn cells(row: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = row.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.last_mut().unwrap().push(c);
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap().push(n);
                }
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    // The empty text before the first pipe and after the last.
    out.remove(0);
    out.pop();
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The "what happened" cell of the Art. 44 table's row for a destination
/// address (`203.0.113.2`), as written.
pub fn what_happened(md: &str, address: &str) -> Option<String> {
    table_rows(md, ART44)
        .into_iter()
        .map(cells)
        .find(|c| {
            c.get(6)
                .is_some_and(|d| d.starts_with(&format!("{address}:")))
        })
        .and_then(|c| c.get(3).cloned())
}

/// The heading of the section on flows let through outside the allowed
/// regions.
pub const ART44: &str = "## Not blocked outside the allowed regions (GDPR Art. 44)";
