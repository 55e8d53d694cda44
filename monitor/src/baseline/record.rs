//! A baseline from recorded flows, written as YAML for people to review:
//! one entry per workload, its destinations by kind, each with its
//! attempts and first and last sight as a comment.
use std::{collections::BTreeMap, fmt::Write};

use super::{dest_of, workload_of, Dest, Seen, Workload, KIND};
use crate::{api::pb, events::rfc3339_nanos, policy::model::API_VERSION};

/// Destinations per workload, with what was seen of each.
pub type Recorded = BTreeMap<Workload, BTreeMap<Dest, Seen>>;

pub fn build(flows: &[pb::Flow]) -> Recorded {
    let mut out = Recorded::new();
    for f in flows {
        out.entry(workload_of(f))
            .or_default()
            .entry(dest_of(f))
            .or_insert(Seen::NONE)
            .add(Seen::of(f));
    }
    out
}

/// A scalar as YAML: plain where that reads back as the same string,
/// else double-quoted (JSON's escaping is valid YAML). Names and cgroup
/// paths come from workloads and DNS answers: nothing in them may become
/// YAML syntax.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:-".contains(&b))
        && (s.as_bytes()[0].is_ascii_alphanumeric() || s.starts_with('/'))
        && !s.ends_with(':')
        && s.parse::<f64>().is_err()
        && !s.starts_with("0x")
        && !s.starts_with("0o")
        && ![
            "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
        ]
        .contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

/// A time to the second, for people: `2026-12-05T13:59:45Z`.
fn seconds(unix_nanos: i64) -> String {
    let t = rfc3339_nanos(i128::from(unix_nanos));
    match t.get(..19) {
        Some(s) => format!("{s}Z"),
        None => t,
    }
}

/// The list key of a destination kind.
fn key(d: &Dest) -> &'static str {
    match d {
        Dest::Name(_) => "names",
        Dest::CloudRegion(_) => "cloudRegions",
        Dest::Cidr(_) => "cidrs",
        Dest::Country(_) => "countries",
    }
}

/// The baseline's YAML: `header` lines first (as comments), then the
/// document named `name`.
pub fn to_yaml(name: &str, header: &[String], recorded: &Recorded) -> String {
    let mut out = String::new();
    for h in header {
        let _ = writeln!(out, "# {h}");
    }
    let _ = writeln!(out, "apiVersion: {API_VERSION}");
    let _ = writeln!(out, "kind: {KIND}");
    let _ = writeln!(out, "metadata:\n  name: {}", scalar(name));
    if recorded.is_empty() {
        let _ = writeln!(out, "spec:\n  workloads: []");
        return out;
    }
    let _ = writeln!(out, "spec:\n  workloads:");
    for (w, dests) in recorded {
        match w {
            Workload::Cgroup(p) => {
                let _ = writeln!(out, "    - cgroup: {}", scalar(p));
            }
            Workload::Pod(p) => {
                let _ = writeln!(out, "    - pod: {}", scalar(p));
            }
        }
        // Dest orders by kind first: each list is one run.
        let mut last = "";
        for (d, seen) in dests {
            if key(d) != last {
                last = key(d);
                let _ = writeln!(out, "      {last}:");
            }
            let _ = writeln!(
                out,
                "        - {}  # {} attempt{}, first {}, last {}",
                scalar(d.value()),
                seen.count,
                if seen.count == 1 { "" } else { "s" },
                seconds(seen.first),
                seconds(seen.last),
            );
        }
    }
    out
}
