//! The SimulatePolicies call: the recorded flows of a window judged again
//! by candidate policies, with the decision code of the kernel compiler
//! (`policy::simulate::decide_at`, the one the differential test holds the
//! kernel to), and what would change.
use std::{collections::BTreeMap, path::Path};

use monitor_common::Region;
use tonic::Status;

use super::pb;
use crate::{
    cloud::{split_place, CloudRanges},
    policy::{self, explain::judging, simulate::decide_at, CompiledPolicy},
};

/// Recorded flows replayed at most (pages of the flow query).
const MAX_FLOWS: usize = 1_000_000;

/// The candidate set, compiled as the daemon would (every file whole, no
/// name twice); INVALID_ARGUMENT naming the file and line otherwise.
pub fn candidates(files: &[pb::CandidateFile]) -> Result<Vec<CompiledPolicy>, Status> {
    if files.is_empty() {
        return Err(Status::invalid_argument(
            "candidates: none given; send the candidate policy files",
        ));
    }
    let mut all = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let name = if f.file_name.is_empty() {
            format!("candidate-{i}.yaml")
        } else {
            f.file_name.clone()
        };
        all.extend(
            policy::compile_text(Path::new(&name), &f.text)
                .map_err(|e| Status::invalid_argument(format!("candidates[{i}]: {e}")))?,
        );
    }
    policy::check_unique_names(&all)
        .map_err(|e| Status::invalid_argument(format!("candidates: {e}")))?;
    Ok(all)
}

fn region(country: &str, continent: &str) -> Region {
    let two = |s: &str| {
        let b = s.as_bytes();
        if b.len() == 2 {
            [b[0], b[1]]
        } else {
            [0, 0]
        }
    };
    Region {
        country: two(country),
        continent: two(continent),
    }
}

/// What the candidates do with one recorded flow: the verdict, the
/// judging policy and the rule; `None` when no candidate selects it.
pub fn replay(
    candidates: &[CompiledPolicy],
    cloud: &CloudRanges,
    f: &pb::Flow,
) -> Option<(monitor_common::Verdict, String, monitor_common::Rule)> {
    let (p, _) = judging(candidates.iter(), Some(&f.cgroup_path), None)?;
    let ip: std::net::IpAddr = f.dst_ip.parse().ok()?;
    let (provider, name) = split_place(&f.cloud_region);
    let cloud_region = if f.cloud_region.is_empty() {
        0
    } else {
        monitor_common::cloud::region_id(provider, name)
    };
    let mut regions = cloud.regions();
    regions.push((provider, name));
    let dns = (!f.dns_name.is_empty()).then_some(f.dns_name.as_str());
    let (verdict, rule) = decide_at(
        p,
        crate::geo::to_u128(ip),
        dns,
        region(&f.country, &f.continent),
        cloud_region,
        &regions,
    );
    Some((verdict, p.name.clone(), rule))
}

/// The simulation over `flows` (recorded, grouped by workload and
/// destination with their names and places).
pub fn simulate(
    candidates: &[CompiledPolicy],
    cloud: &CloudRanges,
    flows: &[pb::Flow],
) -> pb::SimulatePoliciesResponse {
    let mut r = pb::SimulatePoliciesResponse {
        flows: flows.len() as u64,
        ..Default::default()
    };
    // One change per workload, destination and verdicts, counts summed.
    let mut changes: BTreeMap<(String, String, u32, String, String, String), pb::SimulatedChange> =
        BTreeMap::new();
    for f in flows {
        let after = replay(candidates, cloud, f);
        let (verdict_after, policy_after, rule_after) = match &after {
            Some((v, p, rule)) => (v.as_str().to_string(), p.clone(), rule.as_str().to_string()),
            None => (String::new(), String::new(), String::new()),
        };
        if verdict_after == f.verdict {
            r.unchanged += 1;
            continue;
        }
        match (f.verdict.as_str(), verdict_after.as_str()) {
            (_, "") => r.unselected += 1,
            ("allowed", _) => r.newly_denied += 1,
            (_, "allowed") => r.newly_allowed += 1,
            _ => {}
        }
        let key = (
            f.cgroup_path.clone(),
            f.dst_ip.clone(),
            f.dst_port,
            f.protocol.clone(),
            f.verdict.clone(),
            verdict_after.clone(),
        );
        let c = changes.entry(key).or_insert_with(|| pb::SimulatedChange {
            cgroup_path: f.cgroup_path.clone(),
            dst_ip: f.dst_ip.clone(),
            dst_port: f.dst_port,
            protocol: f.protocol.clone(),
            dns_name: f.dns_name.clone(),
            country: f.country.clone(),
            cloud_region: f.cloud_region.clone(),
            count: 0,
            verdict_before: f.verdict.clone(),
            policy_before: f.policy.clone(),
            verdict_after,
            policy_after,
            rule_after,
        });
        c.count += f.count;
    }
    r.changes = changes.into_values().collect();
    r
}

/// The recorded flows of the request's window and filter, grouped by
/// workload, destination, verdict, policy, name and place.
pub fn recorded_flows(
    store: &Path,
    req: &pb::SimulatePoliciesRequest,
) -> Result<Vec<pb::Flow>, Status> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = super::history::query_flows(
            store,
            pb::QueryFlowsRequest {
                window: req.window.clone(),
                filter: req.filter.clone(),
                // Every field but the process: pods are read off the
                // cgroup path, as selectors read them.
                group_by: crate::store::query::GROUP_FIELDS
                    .iter()
                    .filter(|f| !["pod", "process"].contains(f))
                    .map(|f| f.to_string())
                    .collect(),
                sort: "destination".into(),
                limit: 100_000,
                page_token,
            },
        )?;
        out.extend(page.flows);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        if out.len() >= MAX_FLOWS {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_FLOWS} recorded flows in the window: simulate a shorter one"
            )));
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(cgroup: &str, ip: &str, verdict: &str, country: &str, continent: &str) -> pb::Flow {
        pb::Flow {
            cgroup_path: cgroup.into(),
            dst_ip: ip.into(),
            dst_port: 443,
            protocol: "tcp".into(),
            verdict: verdict.into(),
            policy: "old".into(),
            country: country.into(),
            continent: continent.into(),
            count: 5,
            ..Default::default()
        }
    }

    fn candidate(text: &str) -> Vec<CompiledPolicy> {
        candidates(&[pb::CandidateFile {
            file_name: "c.yaml".into(),
            text: text.into(),
        }])
        .unwrap()
    }

    const STRICT: &str = "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: strict}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/llm\"]}\n  allow:\n    countries: [DE]\n    domains: [api.example.com]\n  deny:\n    cloudRegions: [\"aws:eu-west-3\"]\n";

    /// Places, names and cloud regions are taken as recorded; what stays is
    /// counted, what changes is listed with counts, a workload no
    /// candidate selects is said.
    #[test]
    fn recorded_flows_are_judged_again_as_recorded() {
        let c = candidate(STRICT);
        let mut named = flow("/llm/w", "203.0.113.9", "denied", "US", "NA");
        named.dns_name = "api.example.com".into();
        let mut paris = flow("/llm", "15.236.0.1", "allowed", "FR", "EU");
        paris.cloud_region = "aws:eu-west-3".into();
        let flows = vec![
            flow("/llm", "198.51.100.2", "allowed", "DE", "EU"),
            flow("/llm", "203.0.113.2", "allowed", "US", "NA"),
            named,
            paris,
            flow("/other", "203.0.113.2", "allowed", "US", "NA"),
        ];
        let r = simulate(&c, &CloudRanges::default(), &flows);
        assert_eq!((r.flows, r.unchanged), (5, 1));
        assert_eq!((r.newly_denied, r.newly_allowed, r.unselected), (2, 1, 1));
        let find = |ip: &str, cg: &str| {
            r.changes
                .iter()
                .find(|c| c.dst_ip == ip && c.cgroup_path == cg)
                .unwrap_or_else(|| panic!("{ip} {cg}: {:?}", r.changes))
        };
        let us = find("203.0.113.2", "/llm");
        assert_eq!(
            (
                us.verdict_before.as_str(),
                us.verdict_after.as_str(),
                us.rule_after.as_str(),
                us.count
            ),
            ("allowed", "denied", "default", 5)
        );
        let fr = find("15.236.0.1", "/llm");
        assert_eq!(
            (fr.verdict_after.as_str(), fr.rule_after.as_str()),
            ("denied", "cloud_region")
        );
        let named = find("203.0.113.9", "/llm/w");
        assert_eq!(
            (named.verdict_after.as_str(), named.rule_after.as_str()),
            ("allowed", "domain")
        );
        assert_eq!(find("203.0.113.2", "/other").verdict_after, "");
    }

    #[test]
    fn bad_candidates_name_the_file_and_line() {
        let e = candidates(&[]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = candidates(&[pb::CandidateFile {
            file_name: "x.yaml".into(),
            text: STRICT.replace("[DE]", "[UK]"),
        }])
        .unwrap_err();
        assert!(
            e.message().starts_with("candidates[0]: x.yaml:8: \"UK\""),
            "{}",
            e.message()
        );
    }
}
