use std::path::Path;

use monitor_common::{action, rule};

use super::*;

const GOOD: &str = r#"apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata: {name: llm-eu-only}
spec:
  mode: enforce
  selector:
    cgroupPaths: ["/llm.slice", "/kubepods.slice/**/*pod1234*"]
  allow:
    countries: [CH]
    continents: []
    groups: [EEA]
    cidrs: ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]
  deny:
    countries: [HU]
    cidrs: ["10.9.0.0/16"]
"#;

fn f() -> &'static Path {
    Path::new("p.yaml")
}

#[test]
fn a_good_policy_compiles_to_region_rules_and_cidrs() {
    let p = compile_text(f(), GOOD).unwrap().remove(0);
    assert_eq!(p.name, "llm-eu-only");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.allow_cidrs.len(), 3);
    assert_eq!(p.deny_cidrs.len(), 1);
    // EEA is 30, HU is denied, CH is added.
    assert_eq!(p.allowed_countries.len(), 30);
    assert!(p.allowed_countries.contains("CH") && p.allowed_countries.contains("NO"));
    assert!(!p.allowed_countries.contains("HU") && p.denied_countries.contains("HU"));
    let rule_of = |cc: &[u8; 2]| {
        p.region_rules
            .iter()
            .find(|(r, _)| &r.country == cc)
            .map(|(_, r)| (r.action, r.rule))
    };
    assert_eq!(rule_of(b"HU"), Some((action::DENY, rule::COUNTRY)));
    assert_eq!(rule_of(b"CH"), Some((action::ALLOW, rule::COUNTRY)));
    assert_eq!(rule_of(b"DE"), Some((action::ALLOW, rule::GROUP)));
    assert_eq!(rule_of(b"US"), None, "not mentioned: default deny");
    assert!(p.selector.is_match("/llm.slice"));
    assert!(p
        .selector
        .is_match("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_x.slice"));
    assert!(
        !p.selector.is_match("/llm.slice/child"),
        "a glob matches the path itself; the kernel covers the subtree"
    );
    assert!(!p.selector.is_match("/other.slice"));
    let root = compile_text(f(), &GOOD.replace("\"/llm.slice\", ", "\"/\", "))
        .unwrap()
        .remove(0);
    assert!(
        root.selector.is_match("/"),
        "\"/\" selects the cgroup2 root"
    );
}

#[test]
fn continents_decide_with_the_continent_rule_and_deny_beats_allow() {
    let text = GOOD
        .replace("continents: []", "continents: [NA]")
        .replace("countries: [HU]", "countries: [US]");
    let p = compile_text(f(), &text).unwrap().remove(0);
    let rule_of = |cc: &[u8; 2]| {
        p.region_rules
            .iter()
            .find(|(r, _)| &r.country == cc)
            .map(|(_, r)| (r.action, r.rule))
    };
    assert_eq!(rule_of(b"CA"), Some((action::ALLOW, rule::CONTINENT)));
    assert_eq!(rule_of(b"US"), Some((action::DENY, rule::COUNTRY)));
    // A continent-only region (country unknown) follows the continent.
    assert!(p
        .region_rules
        .iter()
        .any(|(r, v)| r.country == [0, 0] && &r.continent == b"NA" && v.action == action::ALLOW));
}

fn error_of(text: &str) -> String {
    compile_text(f(), text).unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_reason() {
    assert_eq!(
        error_of(&GOOD.replace("countries: [CH]", "countries: [CH, XX]")),
        "p.yaml:9: \"XX\" is not an ISO 3166-1 alpha-2 country code"
    );
    assert_eq!(
        error_of(&GOOD.replace("\"10.9.0.0/16\"", "\"10.9.0.1/16\"")),
        "p.yaml:15: \"10.9.0.1/16\" has host bits set; did you mean 10.9.0.0/16?"
    );
    assert!(error_of(&GOOD.replace("\"::1/128\"", "\"::1/129\""))
        .starts_with("p.yaml:12: \"::1/129\" is not a CIDR"));
    assert_eq!(
        error_of(&GOOD.replace("groups: [EEA]", "groups: [NATO]")),
        "p.yaml:11: \"NATO\" is not a known group (one of EU EEA EU_ADEQUATE)"
    );
    assert!(error_of(&GOOD.replace("mode: enforce", "mode: block"))
        .starts_with("p.yaml:5: spec.mode: unknown variant `block`"));
    let e = error_of(&GOOD.replace("  deny:", "  denny:"));
    assert!(
        e.starts_with("p.yaml:13: spec: unknown field `denny`"),
        "{e}"
    );
    assert_eq!(
        error_of(&GOOD.replace("\"/llm.slice\", ", "\"llm.slice\", ")),
        "p.yaml:7: cgroup path \"llm.slice\" must start with '/' (it is relative to the cgroup2 mount)"
    );
    assert!(error_of(&GOOD.replace("egress-monitor.io/v1", "v2"))
        .starts_with("p.yaml:1: apiVersion is \"v2\""));
    assert!(error_of(&GOOD.replace("llm-eu-only", "LLM_EU"))
        .starts_with("p.yaml:3: metadata.name \"LLM_EU\""));
    assert!(error_of("# nothing\n").contains("no policy in file"));
    assert!(error_of("spec: [").starts_with("p.yaml:1:"));
}

#[test]
fn several_documents_in_one_file_keep_their_line_numbers() {
    let second = GOOD
        .replace("llm-eu-only", "second")
        .replace("[CH]", "[QQ]");
    let text = format!("{GOOD}---\n{second}");
    assert_eq!(
        error_of(&text),
        "p.yaml:25: \"QQ\" is not an ISO 3166-1 alpha-2 country code"
    );
    let ok = format!("{GOOD}---\n{}", GOOD.replace("llm-eu-only", "second"));
    assert_eq!(compile_text(f(), &ok).unwrap().len(), 2);
    let dup = format!("{GOOD}---\n{GOOD}");
    // Reported at the second document's name, naming the first's.
    let name_line = GOOD
        .lines()
        .position(|l| l.contains("name: llm-eu-only"))
        .unwrap()
        + 1;
    let second_at = GOOD.lines().count() + 1 + name_line;
    assert_eq!(
        error_of(&dup),
        format!(
            "p.yaml:{second_at}: policy name \"llm-eu-only\" is also defined at p.yaml:{name_line}"
        )
    );
}

#[test]
fn codes_people_reach_for_get_a_hint() {
    let uk = GOOD.replace("[CH]", "[UK]");
    let e = error_of(&uk);
    assert!(
        e.contains("\"UK\" is not an ISO 3166-1 alpha-2 country code; did you mean GB"),
        "{e}"
    );
    let eu = GOOD.replace("[CH]", "[EU]");
    assert!(
        error_of(&eu).contains("write groups: [EU]"),
        "{}",
        error_of(&eu)
    );
}

#[test]
fn an_unreadable_file_has_no_line_zero() {
    let e = crate::policy::compile_file(Path::new("/nonexistent/p.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/p.yaml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn every_shipped_policy_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let files = policy_files(&dir).unwrap();
    assert!(!files.is_empty(), "no policies in {}", dir.display());
    let mut all = Vec::new();
    for file in files {
        all.extend(compile_file(&file).unwrap_or_else(|e| panic!("{e}")));
    }
    check_unique_names(&all).unwrap();
    // Nothing shipped enforces: `cargo xtask run` must never cut a host off.
    for p in &all {
        assert_eq!(p.mode, Mode::Monitor, "{} in {} enforces", p.name, p.file);
    }
}

#[test]
fn policy_ids_are_stable_and_never_reused() {
    let mut ids = PolicyIds::default();
    let a = ids.id("a");
    let b = ids.id("b");
    assert_ne!(a, b);
    assert_eq!(ids.id("a"), a);
    assert_eq!(ids.name(b), Some("b"));
    assert_eq!(ids.name(99), None);
}

#[test]
fn policy_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.json");
    let (a, b) = {
        let mut ids = PolicyIds::open(&file);
        (ids.id("a"), ids.id("b"))
    };
    let mut again = PolicyIds::open(&file);
    assert_eq!(again.name(a), Some("a"));
    assert_eq!(again.id("b"), b);
    assert_ne!(again.id("c"), a);
    std::fs::write(&file, b"not json").unwrap();
    let mut broken = PolicyIds::open(&file);
    assert_eq!(broken.id("x"), 1, "an unreadable file starts empty");
}

const BY_IDENTITY: &str = r#"apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata: {name: by-identity}
spec:
  mode: enforce
  selector:
    pods: ["1B2C3D4E-5F60-4718-9A0B-C1D2E3F40506", 6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53]
    systemdUnits: ["nginx.service", "getty@*.service"]
  allow:
    countries: [DE]
"#;

#[test]
fn pods_and_systemd_units_select_their_own_cgroups() {
    use crate::attribution::attribute;
    let p = compile_text(f(), BY_IDENTITY).unwrap().remove(0);
    assert!(p.pods.contains("1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506"));
    let sel = |path: &str| p.selects(path, &attribute(path));
    let pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4718_9a0b_c1d2e3f40506.slice";
    assert!(sel(pod), "the pod's cgroup (systemd driver)");
    assert!(sel(
        "/kubepods/besteffort/pod1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506"
    ));
    assert!(sel(
        "/kubepods.slice/kubepods-pod6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53.slice"
    ));
    assert!(
        !sel(&format!("{pod}/cri-containerd-{}.scope", "a".repeat(64))),
        "its containers are covered by the kernel's ancestor walk, not selected"
    );
    assert!(!sel(
        "/kubepods/besteffort/pod00000000-5f60-4718-9a0b-c1d2e3f40506"
    ));
    assert!(sel("/system.slice/nginx.service"));
    assert!(sel("/system.slice/system-getty.slice/getty@tty1.service"));
    assert!(!sel("/system.slice/nginx.service/worker"));
    assert!(!sel("/system.slice/sshd.service"));
    assert!(!sel("/system.slice"));
    assert_eq!(
        p.selector_terms(),
        [
            "pod:1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506",
            "pod:6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53",
            "unit:nginx.service",
            "unit:getty@*.service"
        ]
    );
    let globs = compile_text(f(), &BY_IDENTITY.replace("nginx.service", "*.service"))
        .unwrap()
        .remove(0);
    assert!(globs.selects(
        "/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service",
        &attribute("/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service")
    ));
}

#[test]
fn bad_pods_and_units_name_file_line_and_reason() {
    assert!(
        error_of(&BY_IDENTITY.replace("6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53", "my-pod"))
            .starts_with("p.yaml:7: pod UID \"my-pod\" is not a Kubernetes UID")
    );
    assert_eq!(
        error_of(&BY_IDENTITY.replace("\"nginx.service\"", "nginx")),
        "p.yaml:8: systemd unit \"nginx\" must end in a unit type: .service, .scope, .socket, .mount, .swap (or .*)"
    );
    assert!(
        error_of(&BY_IDENTITY.replace("\"nginx.service\"", "\"system.slice\""))
            .starts_with("p.yaml:8: systemd unit \"system.slice\" is a slice")
    );
    assert!(
        error_of(&BY_IDENTITY.replace("\"nginx.service\"", "\"a[.service\""))
            .starts_with("p.yaml:8: systemd unit glob \"a[.service\"")
    );
    let empty = BY_IDENTITY
        .replace("    pods: [\"1B2C3D4E-5F60-4718-9A0B-C1D2E3F40506\", 6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53]\n", "")
        .replace("    systemdUnits: [\"nginx.service\", \"getty@*.service\"]\n", "    cgroupPaths: []\n");
    assert_eq!(
        error_of(&empty),
        "p.yaml:6: spec.selector is empty: a policy must select cgroupPaths, pods or systemdUnits"
    );
}

#[test]
fn an_empty_selector_glob_is_an_error_not_a_panic() {
    // Found by the property tests: an empty token once sent the line
    // finder past the end of a line.
    let e = error_of(&GOOD.replace("\"/llm.slice\", ", "\"\", "));
    assert_eq!(
        e,
        "p.yaml:7: cgroup path \"\" must start with '/' (it is relative to the cgroup2 mount)"
    );
}

/// `domains` and `cloudRegions`: normalised, and every bad one named with
/// its file and line.
#[test]
fn domains_and_cloud_regions_compile_and_bad_ones_name_their_line() {
    let with = GOOD.replace(
        "    cidrs: [\"10.9.0.0/16\"]\n",
        "    cidrs: [\"10.9.0.0/16\"]\n    domains: [\"*.evil.example\"]\n",
    )
    .replace(
        "    groups: [EEA]\n",
        "    groups: [EEA]\n    domains: [\"API.OpenAI.com.\", \"*.my.salesforce.com\"]\n    cloudRegions: [\"aws:eu-*\", \"gcp:europe-west3\"]\n",
    );
    let p = compile_text(f(), &with).unwrap().remove(0);
    let shown: Vec<String> = p.allow_domains.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, ["api.openai.com", "*.my.salesforce.com"]);
    assert_eq!(p.deny_domains[0].to_string(), "*.evil.example");
    assert_eq!(p.allow_cloud.len(), 2);
    assert!(p.allow_cloud[0].matches("aws", "eu-central-1"));
    assert!(!p.allow_cloud[0].matches("aws", "us-east-1"));

    let bad = |domain: &str| error_of(&with.replace("\"API.OpenAI.com.\"", domain));
    assert_eq!(
        bad("\"api.*.com\""),
        "p.yaml:12: \"api.*.com\": a wildcard may only be the whole first label (`*.example.com`)"
    );
    assert_eq!(bad("\"a..b\""), "p.yaml:12: \"a..b\" has an empty label");
    assert!(bad("\"-a.com\"").contains("starts or ends with '-'"));
    assert!(bad("\"a_b.com\"").contains("a character other than letters, digits and '-'"));
    assert!(bad(&format!("\"{}.com\"", "x".repeat(64))).contains("longer than 63"));
    assert!(bad("\"*.a.b.c.d.e.f.g\"").contains("at most 6 labels"));
    let e = error_of(&with.replace("\"gcp:europe-west3\"", "\"europe-west3\""));
    assert!(e.starts_with("p.yaml:13: "), "{e}");
}

/// A hostile policy directory: too many files, a huge file, a symlink
/// loop. Each is refused with its reason.
#[test]
fn hostile_policy_directories_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..=MAX_FILES {
        std::fs::write(d.path().join(format!("p{i}.yaml")), "").unwrap();
    }
    let err = policy_files(d.path()).unwrap_err().to_string();
    assert!(err.contains("more than 1000 policy files"), "{err}");

    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(50 << 20).unwrap();
    let err = compile_file(&big).unwrap_err().to_string();
    assert!(
        err.contains("52428800 bytes, more than the 16777216"),
        "{err}"
    );

    let a = d.path().join("a.yaml");
    let b = d.path().join("b.yaml");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let files = policy_files(d.path()).unwrap();
    assert!(files.contains(&a) && files.contains(&b), "{files:?}");
    let err = compile_file(&a).unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("symbolic links"),
        "{err}"
    );
}

/// A cloud-region typo is caught: an unknown provider and a deny pattern
/// that matches no region are errors at their lines (they would fail
/// open), an allow pattern that matches none is a warning; each names the
/// nearest names.
#[test]
fn cloud_region_typos_are_errors_in_deny_and_warnings_in_allow() {
    let text = r#"apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata: {name: typos}
spec:
  mode: enforce
  selector: {cgroupPaths: ["/llm.slice"]}
  allow:
    cloudRegions: ["aws:eu-central-1", "gcp:europe-west3", "aws:eu-centrl-1"]
  deny:
    cloudRegions:
      - "aws:eu-*"
      - "aws:eu-west3"
      - "awz:eu-central-1"
"#;
    let p = compile_text(f(), text).unwrap().remove(0);
    let (errors, warnings) = lint::cloud_patterns(&p, &crate::cloud::CloudRanges::default());
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0]
            .starts_with("p.yaml:12: deny.cloudRegions \"aws:eu-west3\": matches no region of aws")
            && errors[0].contains("did you mean eu-west-3")
            && errors[0].contains("it would deny nothing"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with(
            "p.yaml:13: deny.cloudRegions \"awz:eu-central-1\": no cloud provider \"awz\""
        ) && errors[1].contains("did you mean aws?"),
        "{}",
        errors[1]
    );
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "allow.cloudRegions \"aws:eu-centrl-1\" (line 8) matches no region of aws"
        ) && warnings[0].contains("did you mean eu-central-1")
            && warnings[0].contains("it allows nothing"),
        "{}",
        warnings[0]
    );
}
