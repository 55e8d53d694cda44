//! Drift alerts while the daemon runs: the first contact of a workload,
//! selected by a policy that names a baseline (`spec.baseline`), with a
//! destination outside that baseline raises one `drift` event, once per
//! policy, workload and new destination (not per connection: a workload
//! that keeps calling a new API raises one alert).
//!
//! The pipeline asks for each decision it drains ([`Live::check`]); the
//! baselines are those of the policy set in force, parsed once per set
//! from the text the controller read and checked (never re-read from a
//! file that may have changed since). What was alerted is kept (bounded)
//! and, at a start, filled from the alerts the store holds, so a restart
//! does not alert again for what it already reported.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::policy::baseline::{Baseline, Dest, Place, Workload};
use crate::{
    events::{self, Event},
    state::PolicySnapshot,
};

/// The most (policy, workload, destination) alerts remembered; past it the
/// memory starts over (and says so), so alerts may repeat rather than stop.
pub const MAX_ALERTED: usize = 65_536;

/// A baseline of the set in force.
struct Loaded {
    sha256: String,
    baseline: Baseline,
}

type Key = (String, Workload, Dest);

#[derive(Default)]
struct State {
    /// The set the baselines were parsed from.
    from: Option<Arc<PolicySnapshot>>,
    /// Policy name to its baseline.
    baselines: HashMap<String, Arc<Loaded>>,
    alerted: HashSet<Key>,
}

/// The drift check of the event pipeline.
#[derive(Default)]
pub struct Live {
    /// The policy set in force (none: never alerts).
    policies: Option<watch::Receiver<Arc<PolicySnapshot>>>,
    state: Mutex<State>,
}

/// Where an event went, as a baseline knows destinations.
fn dest_of(e: &Event) -> Dest {
    let cloud = crate::store::cloud_place(e);
    Dest::of(Place {
        dns_name: &e.dns_name,
        cloud_region: &cloud,
        dst_ip: &e.dst_ip,
        country: &e.country,
    })
}

fn key_of(e: &Event) -> Key {
    (
        e.policy.clone(),
        Workload::new(&e.pod_uid, &e.cgroup_path),
        dest_of(e),
    )
}

impl Live {
    /// Checks events against the baselines of the set `policies` holds.
    pub fn watching(policies: watch::Receiver<Arc<PolicySnapshot>>) -> Self {
        Self {
            policies: Some(policies),
            state: Mutex::default(),
        }
    }

    /// Remembers alerts raised before (the store's): they are not raised
    /// again. Returns how many were new to memory.
    pub fn remember<'a>(&self, alerts: impl IntoIterator<Item = &'a Event>) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = st.alerted.len();
        for e in alerts {
            if e.verdict == events::DRIFT && st.alerted.len() < MAX_ALERTED {
                st.alerted.insert(key_of(e));
            }
        }
        st.alerted.len() - before
    }

    /// The drift alert `e` raises, if it is the first contact of its
    /// workload with a destination outside its policy's baseline.
    pub fn check(&self, e: &Event) -> Option<Event> {
        if e.verdict == events::DRIFT || e.policy.is_empty() {
            return None;
        }
        let snapshot = self.policies.as_ref()?.borrow().clone();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.from.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snapshot)) {
            st.baselines = parse_all(&snapshot);
            st.from = Some(snapshot);
        }
        let loaded = st.baselines.get(&e.policy)?.clone();
        let workload = Workload::new(&e.pod_uid, &e.cgroup_path);
        let dest = dest_of(e);
        let (known, listed) = loaded.baseline.known_for(&workload);
        if known.covers(&dest, e.dst_ip.parse::<IpAddr>().ok()) {
            return None;
        }
        // Each new destination once: the rest of the work only for the
        // first contact.
        if st.alerted.len() >= MAX_ALERTED {
            log::warn!(
                "drift: {MAX_ALERTED} new destinations alerted since the start; the memory of \
                 which were alerted starts over, so alerts may repeat"
            );
            st.alerted.clear();
        }
        let key = (e.policy.clone(), workload, dest);
        if st.alerted.contains(&key) {
            return None;
        }
        let dest = &key.2;
        let mut compared = known.compared_to(dest);
        if compared.len() > events::DRIFT_KNOWN_MAX {
            let more = compared.len() - events::DRIFT_KNOWN_MAX;
            compared.truncate(events::DRIFT_KNOWN_MAX);
            compared.push(format!("({more} more)"));
        }
        let drift = events::Drift {
            attempt: e.verdict.to_string(),
            baseline: loaded.baseline.name.clone(),
            baseline_sha256: loaded.sha256.clone(),
            kind: dest.kind().to_string(),
            known: compared,
            listed,
            value: dest.value().to_string(),
        };
        st.alerted.insert(key);
        let mut alert = e.clone();
        alert.verdict = events::DRIFT;
        alert.rule = events::BASELINE_RULE;
        // Made by the daemon: no number in the kernel's ring.
        alert.kernel_seq = 0;
        alert.kernel_cpu = 0;
        alert.drift = Some(Box::new(drift));
        Some(alert)
    }
}

/// The baselines of a policy set, by policy name.
fn parse_all(snapshot: &PolicySnapshot) -> HashMap<String, Arc<Loaded>> {
    let mut out = HashMap::new();
    for p in &snapshot.policies {
        let Some(b) = &p.policy.baseline else {
            continue;
        };
        // Checked when the policy was loaded; a failure here is a bug,
        // said rather than passed over.
        match crate::policy::baseline::parse(std::path::Path::new(&b.path), &b.text) {
            Ok(baseline) => {
                out.insert(
                    p.policy.name.clone(),
                    Arc::new(Loaded {
                        sha256: b.sha256.clone(),
                        baseline,
                    }),
                );
            }
            Err(e) => log::error!(
                "policy {}: its baseline no longer parses, no drift alerts for it: {e}",
                p.policy.name
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PolicyInForce;

    const POLICY: &str = "apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata:
  name: web
spec:
  mode: monitor
  selector:
    cgroupPaths: [/app/*]
  baseline: b.yaml
";

    const BASELINE: &str = "apiVersion: egress-monitor.io/v1
kind: EgressBaseline
metadata:
  name: web-baseline
spec:
  workloads:
    - cgroup: app/web
      names: [api.example.com]
      countries: [DE]
";

    fn snapshot(dir: &std::path::Path) -> Arc<PolicySnapshot> {
        std::fs::write(dir.join("web.yaml"), POLICY).unwrap();
        std::fs::write(dir.join("b.yaml"), BASELINE).unwrap();
        let p = crate::policy::compile_file(&dir.join("web.yaml")).unwrap();
        Arc::new(PolicySnapshot {
            policies: p
                .into_iter()
                .map(|policy| PolicyInForce {
                    policy,
                    selected: Vec::new(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn event(cgroup: &str, ip: &str, country: &str, name: &str) -> Event {
        Event {
            verdict: "would_deny",
            policy: "web".into(),
            cgroup_path: cgroup.into(),
            dst_ip: ip.into(),
            country: country.into(),
            dns_name: name.into(),
            ..Default::default()
        }
    }

    /// One alert per new destination, with what was new and what it was
    /// compared to; known destinations, repeats and other policies raise
    /// none; a workload not listed is compared to the whole baseline.
    #[test]
    fn one_alert_per_new_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(snapshot(dir.path()));
        let live = Live::watching(rx);
        assert!(live
            .check(&event("app/web", "198.51.100.2", "DE", ""))
            .is_none());
        assert!(live
            .check(&event("app/web", "203.0.113.2", "US", "api.example.com"))
            .is_none());
        let a = live
            .check(&event("app/web", "203.0.113.3", "US", ""))
            .expect("a new country");
        assert_eq!((a.verdict, a.rule, a.kernel_seq), ("drift", "baseline", 0));
        let d = a.drift.as_deref().unwrap();
        assert_eq!(
            (d.kind.as_str(), d.value.as_str(), d.attempt.as_str()),
            ("country", "US", "would_deny")
        );
        assert_eq!((d.known.clone(), d.listed), (vec!["DE".to_string()], true));
        assert_eq!(d.baseline, "web-baseline");
        assert_eq!(d.baseline_sha256.len(), 64);
        // Another address in the same new country: the same destination.
        assert!(live
            .check(&event("app/web", "203.0.113.4", "US", ""))
            .is_none());
        // Another policy (no baseline), and an alert itself: nothing.
        let mut other = event("app/web", "203.0.113.5", "FR", "");
        other.policy = "crm".into();
        assert!(live.check(&other).is_none());
        assert!(live.check(&a).is_none());
        // A new replica: compared to all the baseline's workloads.
        assert!(live
            .check(&event("app/web-2", "198.51.100.9", "DE", ""))
            .is_none());
        let n = live
            .check(&event("app/web-2", "203.0.113.6", "FR", "cdn.example.com"))
            .expect("a new name");
        let d = n.drift.as_deref().unwrap();
        assert_eq!((d.kind.as_str(), d.listed), ("name", false));
        // A restart that remembers the store's alerts raises none again.
        let (_tx2, rx2) = watch::channel(snapshot(dir.path()));
        let again = Live::watching(rx2);
        assert_eq!(again.remember([&a, &n]), 2);
        assert!(again
            .check(&event("app/web", "203.0.113.7", "US", ""))
            .is_none());
        assert!(again
            .check(&event("app/web", "203.0.113.7", "FR", ""))
            .is_some());
    }
}
