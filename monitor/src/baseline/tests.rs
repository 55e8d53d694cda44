use std::path::Path;

use super::{diff::diff, record, Dest, Workload};
use crate::api::pb;
use crate::policy::baseline as model;

fn flow(cgroup: &str, ip: &str, country: &str, name: &str, cloud: &str, count: u64) -> pb::Flow {
    pb::Flow {
        cgroup_path: cgroup.into(),
        dst_ip: ip.into(),
        dst_port: 443,
        protocol: "tcp".into(),
        country: country.into(),
        dns_name: name.into(),
        cloud_region: cloud.into(),
        count,
        first_seen_unix_nanos: 1_795_308_341_000_000_000,
        last_seen_unix_nanos: 1_795_308_400_000_000_000,
        ..Default::default()
    }
}

fn recorded_yaml(flows: &[pb::Flow]) -> String {
    record::to_yaml("web", &["a header".into()], &record::build(flows))
}

fn error_of(text: &str) -> String {
    model::parse(Path::new("b.yaml"), text)
        .expect_err("refused")
        .to_string()
}

const GOOD: &str = "apiVersion: egress-monitor.io/v1
kind: EgressBaseline
metadata:
  name: web
spec:
  workloads:
    - cgroup: app/web
      names:
        - api.example.com
      countries:
        - DE
";

/// Each destination is known by the most specific thing recorded of it.
#[test]
fn destinations_are_names_then_regions_then_ranges_then_countries() {
    let of = |ip, country, name, cloud| super::dest_of(&flow("c", ip, country, name, cloud, 1));
    assert_eq!(
        of("198.51.100.2", "DE", "API.Example.com.", "aws:eu-central-1"),
        Dest::Name("api.example.com".into())
    );
    assert_eq!(
        of("198.51.100.2", "DE", "", "aws:eu-central-1"),
        Dest::CloudRegion("aws:eu-central-1".into())
    );
    assert_eq!(of("10.1.2.3", "", "", ""), Dest::Cidr("10.0.0.0/8".into()));
    assert_eq!(
        of("169.254.169.254", "", "", ""),
        Dest::Cidr("169.254.0.0/16".into())
    );
    assert_eq!(of("fe80::1", "", "", ""), Dest::Cidr("fe80::/10".into()));
    assert_eq!(of("198.51.100.2", "DE", "", ""), Dest::Country("DE".into()));
    assert_eq!(
        of("198.51.100.9", "", "", ""),
        Dest::Cidr("198.51.100.9/32".into())
    );
    // A name no baseline could list falls back to what else is known.
    assert_eq!(
        of("198.51.100.2", "DE", "_sip._tcp.example.com", ""),
        Dest::Country("DE".into())
    );
}

/// The writer groups per workload and kind, counts and first/last sight as
/// comments, and what it writes parses back to the same destinations.
#[test]
fn a_recorded_baseline_reads_back() {
    let flows = [
        flow("app/web", "198.51.100.2", "DE", "", "", 3),
        flow("app/web", "198.51.100.3", "DE", "", "", 2),
        flow("app/web", "203.0.113.2", "US", "api.example.com", "", 1),
        flow("app/web", "10.0.0.7", "", "", "", 4),
        pb::Flow {
            pod_uid: "0b7c4c1e-1111-2222-3333-444455556666".into(),
            ..flow(
                "kubepods/pod0b7c",
                "203.0.113.9",
                "US",
                "",
                "aws:us-east-1",
                5,
            )
        },
    ];
    let text = recorded_yaml(&flows);
    assert!(
        text.starts_with("# a header\napiVersion: egress-monitor.io/v1\nkind: EgressBaseline\n"),
        "{text}"
    );
    assert!(
        text.contains("      countries:\n        - DE  # 5 attempts, first 2026-11-22T00:45:41Z, last 2026-11-22T00:46:40Z\n"),
        "{text}"
    );
    assert!(
        text.contains("      names:\n        - api.example.com  # 1 attempt,"),
        "{text}"
    );
    assert!(
        text.contains("      cidrs:\n        - 10.0.0.0/8  # 4 attempts"),
        "{text}"
    );
    assert!(text.contains("    - pod: 0b7c4c1e-1111-2222-3333-444455556666\n      cloudRegions:\n        - aws:us-east-1  # 5 attempts"), "{text}");
    let b = model::parse(Path::new("b.yaml"), &text).expect("reads back");
    assert_eq!(b.name, "web");
    assert_eq!(b.workloads.len(), 2);
    // Everything recorded is covered: no drift against itself.
    let d = diff(&b, &flows);
    assert!(d.new.is_empty(), "{d:?}");
}

/// Names and paths from workloads and DNS answers cannot become YAML
/// syntax: hostile strings are quoted and read back as themselves.
#[test]
fn hostile_strings_are_quoted() {
    let path = "/app/x: {y: [z]} # &a *a \"q\"\n- no";
    let text = recorded_yaml(&[flow(path, "198.51.100.2", "NO", "", "", 1)]);
    let b = model::parse(Path::new("b.yaml"), &text).expect("reads back");
    let (w, known) = b.workloads.iter().next().unwrap();
    assert_eq!(w, &Workload::Cgroup(path.into()));
    // `NO` stays Norway, not a boolean.
    assert_eq!(known.countries, vec!["NO".to_string()]);
    // A plain path stays plain, for people.
    let text = recorded_yaml(&[flow("/kubepods.slice/web", "198.51.100.2", "DE", "", "", 1)]);
    assert!(
        text.contains("    - cgroup: /kubepods.slice/web\n"),
        "{text}"
    );
}

/// A new name, a new country, a new region are each reported once per
/// workload, with what they were compared to; a workload the baseline
/// does not list is compared to all its workloads' destinations.
#[test]
fn diff_lists_what_is_new_and_what_it_was_compared_to() {
    let b = model::parse(Path::new("b.yaml"), GOOD).unwrap();
    let flows = [
        flow("app/web", "198.51.100.2", "DE", "", "", 1),
        flow("app/web", "203.0.113.2", "US", "api.example.com", "", 1),
        flow("app/web", "203.0.113.2", "US", "", "", 2),
        flow("app/web", "203.0.113.3", "US", "", "", 3),
        flow("app/web", "203.0.113.4", "US", "cdn.example.com", "", 1),
        flow("app/other", "203.0.113.2", "US", "", "", 1),
        // Another workload's destination is known to a workload not listed.
        flow("app/other", "198.51.100.3", "DE", "", "", 1),
        flow("app/other", "203.0.113.9", "US", "api.example.com", "", 1),
    ];
    let d = diff(&b, &flows);
    let got: Vec<(&str, &str, u64, Vec<String>)> = d
        .new
        .iter()
        .map(|n| (n.kind, n.value.as_str(), n.attempts, n.baseline.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("country", "US", 1, vec!["DE".to_string()]),
            (
                "name",
                "cdn.example.com",
                1,
                vec!["api.example.com".to_string()]
            ),
            ("country", "US", 5, vec!["DE".to_string()]),
        ]
    );
    assert_eq!(d.new[0].workload, Workload::Cgroup("app/other".into()));
    assert_eq!(d.new[2].destinations.len(), 2);
    assert_eq!((d.unlisted_flows, d.unlisted_workloads), (3, 1));
}

/// Wildcards, region patterns and ranges a person wrote in cover what
/// they say.
#[test]
fn hand_written_patterns_cover() {
    let text = GOOD.replace("- api.example.com", "- \"*.example.com\"")
        + "      cloudRegions: [\"aws:eu-*\"]\n      cidrs: [10.1.0.0/16]\n";
    let b = model::parse(Path::new("b.yaml"), &text).unwrap();
    let flows = [
        flow("app/web", "198.51.100.2", "DE", "api.example.com", "", 1),
        flow("app/web", "198.51.100.2", "DE", "", "aws:eu-west-1", 1),
        flow("app/web", "10.1.2.3", "", "", "", 1),
        flow("app/web", "10.2.0.1", "", "", "", 1),
        flow("app/web", "198.51.100.2", "DE", "example.com", "", 1),
    ];
    let d = diff(&b, &flows);
    let got: Vec<&str> = d.new.iter().map(|n| n.value.as_str()).collect();
    assert_eq!(got, vec!["example.com", "10.0.0.0/8"]);
}

/// Bad baselines are refused with file, line and reason.
#[test]
fn bad_baselines_name_file_line_and_reason() {
    assert_eq!(
        error_of(&GOOD.replace("- DE", "- Germany")),
        "b.yaml:11: \"Germany\" is not an ISO 3166-1 alpha-2 country code"
    );
    assert_eq!(
        error_of(&GOOD.replace("kind: EgressBaseline", "kind: EgressPolicy")),
        "b.yaml:2: kind is \"EgressPolicy\", expected \"EgressBaseline\""
    );
    let e = error_of(&GOOD.replace("api.example.com", "https://api.example.com/x"));
    assert!(e.starts_with("b.yaml:9: "), "{e}");
    let e = error_of(&GOOD.replace("cgroup: app/web", "cgroup: \"\""));
    assert!(
        e.starts_with("b.yaml:6: workloads[0] names no workload"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("      names:", "      pod: abc\n      names:"));
    assert!(
        e.starts_with("b.yaml:7: workloads[0] has both cgroup and pod"),
        "{e}"
    );
    let e = error_of(&(GOOD.to_string() + "    - cgroup: app/web\n"));
    assert!(e.contains("cgroup app/web is listed twice"), "{e}");
    let e = error_of(&GOOD.replace("names:", "nams:"));
    assert!(
        e.starts_with("b.yaml:8: spec.workloads[0]: unknown field `nams`"),
        "{e}"
    );
    let e = error_of(
        &GOOD
            .replace("- DE", "- 10.0.0.1/8")
            .replace("countries:", "cidrs:"),
    );
    assert!(
        e.starts_with("b.yaml:11: \"10.0.0.1/8\" has host bits set"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("- cgroup: app/web", "- &w cgroup: app/web"));
    assert!(
        e.starts_with("b.yaml:7: anchors and aliases are not accepted in a baseline"),
        "{e}"
    );
    let e = error_of(&(GOOD.to_string() + "---\n" + GOOD));
    assert!(
        e.starts_with("b.yaml:12: a baseline file holds one document"),
        "{e}"
    );
    let e = error_of("spec: [\n");
    assert!(e.starts_with("b.yaml:1: not valid YAML"), "{e}");
}
