//! What `top` shows, worked out from what the daemon answered: rates from
//! two status readings, the top destinations and workloads from the flows
//! of the last minute, the latest refusals and drift alerts from the live
//! stream, and the filters the keys choose. No terminal here: the view
//! draws this, the tests read it.
use std::collections::VecDeque;

use crate::api::pb;

/// The verdicts the `v` key steps through (empty: all).
pub const VERDICTS: [&str; 5] = ["", "denied", "would_deny", "allowed", "drift"];

/// The latest refusals and alerts kept.
pub const LATEST: usize = 12;

/// The filters chosen with the keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub verdict: String,
    pub policy: String,
    pub workload: String,
}

impl Filters {
    /// The daemon's filter: these and the command line's, together.
    pub fn apply(&self, base: &pb::EventFilter) -> pb::EventFilter {
        let mut f = base.clone();
        if !self.verdict.is_empty() {
            f.verdicts = vec![self.verdict.clone()];
        }
        if !self.policy.is_empty() {
            f.policies = vec![self.policy.clone()];
        }
        if !self.workload.is_empty() {
            f.cgroup_globs = vec![self.workload.clone()];
        }
        f
    }

    /// The filters as the header says them.
    pub fn describe(&self) -> String {
        let any = |s: &str| if s.is_empty() { "all" } else { s }.to_string();
        format!(
            "verdict {}  policy {}  workload {}",
            any(&self.verdict),
            any(&self.policy),
            any(&self.workload)
        )
    }
}

/// The next of `list` after `current` (wrapping; an unknown current starts
/// over).
pub fn next_of(list: &[String], current: &str) -> String {
    match list.iter().position(|x| x == current) {
        Some(i) => list[(i + 1) % list.len()].clone(),
        None => list.first().cloned().unwrap_or_default(),
    }
}

/// Per-second rates between two status readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub allowed: f64,
    pub denied: f64,
    pub would_deny: f64,
    pub drift: f64,
    /// Attempts answered from the kernel's cache, counted in flows.
    pub repeats: f64,
}

/// A counter of the status's flow table (`repeats`, ...).
fn flow_count(s: &pb::GetStatusResponse, name: &str) -> u64 {
    s.flows
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.count)
}

impl Rates {
    pub fn between(before: &pb::GetStatusResponse, now: &pb::GetStatusResponse, secs: f64) -> Self {
        let (Some(a), Some(b)) = (&before.counters, &now.counters) else {
            return Rates::default();
        };
        // A restarted daemon starts its counters over: no negative rates.
        let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs.max(0.001);
        Rates {
            allowed: per(a.allowed, b.allowed),
            denied: per(a.denied, b.denied),
            would_deny: per(a.would_deny, b.would_deny),
            drift: per(a.drift_alerts, b.drift_alerts),
            repeats: per(flow_count(before, "repeats"), flow_count(now, "repeats")),
        }
    }
}

/// One row of a top list: what, and its attempts in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    pub place: String,
    pub count: u64,
    pub per_second: f64,
}

/// The top destinations of a flow page grouped by destination and name.
pub fn destinations(flows: &[pb::Flow], window_secs: f64) -> Vec<Row> {
    flows
        .iter()
        .map(|f| {
            let dst = if f.dns_name.is_empty() {
                f.dst_ip.clone()
            } else {
                format!("{} ({})", f.dns_name, f.dst_ip)
            };
            Row {
                label: dst,
                place: place(&f.country, &f.cloud_region),
                count: f.count,
                per_second: f.count as f64 / window_secs,
            }
        })
        .collect()
}

/// The top workloads of a flow page grouped by cgroup.
pub fn workloads(flows: &[pb::Flow], window_secs: f64) -> Vec<Row> {
    flows
        .iter()
        .map(|f| Row {
            label: f.cgroup_path.clone(),
            place: String::new(),
            count: f.count,
            per_second: f.count as f64 / window_secs,
        })
        .collect()
}

fn place(country: &str, cloud: &str) -> String {
    match (country.is_empty(), cloud.is_empty()) {
        (true, true) => "-".into(),
        (false, true) => country.into(),
        (true, false) => cloud.into(),
        (false, false) => format!("{country} {cloud}"),
    }
}

/// The latest refusals and drift alerts, newest first.
#[derive(Debug, Default)]
pub struct Latest {
    pub rows: VecDeque<pb::Event>,
}

impl Latest {
    /// Keeps `e` if it is a refusal or an alert.
    pub fn push(&mut self, e: pb::Event) {
        if !matches!(e.verdict.as_str(), "denied" | "would_deny" | "drift") {
            return;
        }
        self.rows.push_front(e);
        self.rows.truncate(LATEST);
    }

    /// A line for people: time, verdict, process, cgroup, destination,
    /// place, policy, then the executable and the container (and what is
    /// new, for an alert).
    pub fn line(e: &pb::Event) -> String {
        let time = e.time.get(11..19).unwrap_or(&e.time);
        let dst = if e.dns_name.is_empty() {
            format!("{}:{}", e.dst_ip, e.dst_port)
        } else {
            format!("{} ({}:{})", e.dns_name, e.dst_ip, e.dst_port)
        };
        let cloud = if e.cloud.is_empty() {
            String::new()
        } else {
            crate::cloud::place_label(&e.cloud, &e.cloud_region)
        };
        let mut out = format!(
            "{time} {:<10} {}[{}] {} -> {dst} {} {}",
            e.verdict,
            e.comm,
            e.tgid,
            e.cgroup_path,
            place(&e.country, &cloud),
            e.policy
        );
        if !e.exe.is_empty() {
            out.push_str(&format!("  exe {}", e.exe));
        }
        if let Some(c) = crate::cli::output::container_line(e) {
            out.push_str(&format!("  {c}"));
        }
        if let Some(d) = &e.drift {
            out.push_str(&format!("  new {} {}", d.kind, d.value));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(allowed: u64, denied: u64, repeats: u64) -> pb::GetStatusResponse {
        pb::GetStatusResponse {
            counters: Some(pb::Counters {
                allowed,
                denied,
                ..Default::default()
            }),
            flows: vec![pb::NamedCount {
                name: "repeats".into(),
                count: repeats,
            }],
            ..Default::default()
        }
    }

    /// A refusal names its process: comm and tgid, then the executable
    /// and, in a container, the container and its image.
    #[test]
    fn a_refusal_line_names_the_executable_and_container() {
        let e = pb::Event {
            time: "2026-12-05T22:38:54.213068623Z".into(),
            verdict: "denied".into(),
            comm: "nc".into(),
            tgid: 10179,
            exe: "/bin/busybox".into(),
            cgroup_path: "/llm/sel/libpod-173b".into(),
            dst_ip: "203.0.113.2".into(),
            dst_port: 443,
            country: "US".into(),
            policy: "eu-only".into(),
            container_id: "173b870b5b80821c".into(),
            container_name: "probe".into(),
            image: "localhost/egress-probe:test".into(),
            ..Default::default()
        };
        assert_eq!(
            Latest::line(&e),
            "22:38:54 denied     nc[10179] /llm/sel/libpod-173b -> 203.0.113.2:443 US eu-only  exe /bin/busybox  container probe (173b870b5b80) image localhost/egress-probe:test"
        );
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let r = Rates::between(&status(10, 4, 100), &status(30, 8, 160), 2.0);
        assert_eq!((r.allowed, r.denied, r.repeats), (10.0, 2.0, 30.0));
        // A daemon restarted between the readings.
        let r = Rates::between(&status(30, 8, 160), &status(1, 0, 0), 1.0);
        assert_eq!((r.allowed, r.denied, r.repeats), (0.0, 0.0, 0.0));
    }

    #[test]
    fn filters_step_and_apply() {
        let verdicts: Vec<String> = VERDICTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(next_of(&verdicts, ""), "denied");
        assert_eq!(next_of(&verdicts, "drift"), "");
        assert_eq!(next_of(&[], "x"), "");
        let f = Filters {
            verdict: "denied".into(),
            policy: String::new(),
            workload: "/app/web".into(),
        };
        let base = pb::EventFilter {
            countries: vec!["US".into()],
            ..Default::default()
        };
        let got = f.apply(&base);
        assert_eq!(got.verdicts, ["denied"]);
        assert_eq!(got.cgroup_globs, ["/app/web"]);
        assert_eq!(got.countries, ["US"]);
        assert!(got.policies.is_empty());
        assert_eq!(
            f.describe(),
            "verdict denied  policy all  workload /app/web"
        );
    }

    #[test]
    fn latest_keeps_refusals_and_alerts_newest_first() {
        let mut l = Latest::default();
        for (i, v) in ["allowed", "denied", "would_deny", "drift"]
            .iter()
            .enumerate()
        {
            l.push(pb::Event {
                verdict: v.to_string(),
                dst_port: i as u32,
                ..Default::default()
            });
        }
        let kept: Vec<&str> = l.rows.iter().map(|e| e.verdict.as_str()).collect();
        assert_eq!(kept, ["drift", "would_deny", "denied"]);
        for i in 0..(LATEST as u32 + 5) {
            l.push(pb::Event {
                verdict: "denied".into(),
                dst_port: i,
                ..Default::default()
            });
        }
        assert_eq!(l.rows.len(), LATEST);
        assert_eq!(l.rows[0].dst_port, LATEST as u32 + 4);
    }
}
