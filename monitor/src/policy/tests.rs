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
    // A URL where a name belongs says so, with the name it holds.
    for url in [
        "\"https://login.example.com/path\"",
        "\"login.example.com/oauth\"",
        "\"login.example.com:443\"",
    ] {
        let e = bad(url);
        assert!(
            e.contains(
                "is a URL; a domain rule takes a DNS name, not a URL (here: \"login.example.com\")"
            ),
            "{e}"
        );
    }
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

/// Counts the bytes each thread allocates, so a test can show that a parse
/// built nothing big (the test binary's allocator: the system's, counted).
struct CountingAlloc;

thread_local! {
    static ALLOCATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counting touches only a const-initialised thread-local without a destructor.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

/// Bytes this thread allocated while `f` ran, and what it returned.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(|a| a.get());
    let out = f();
    (ALLOCATED.with(|a| a.get()) - before, out)
}

/// The billion-laughs document of issue 36: one 400 KB scalar anchored in
/// `allow.cidrs` and aliased `aliases` times after it (about 60 GB when
/// expanded, at 150,000).
fn alias_bomb(scalar: usize, aliases: usize) -> String {
    let mut text = String::from(
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: bomb}\nspec:\n  mode: monitor\n  selector: {cgroupPaths: [\"/a\"]}\n  allow:\n    cidrs: [&a \"",
    );
    text.push_str(&"1".repeat(scalar));
    text.push('"');
    for _ in 0..aliases {
        text.push_str(",*a");
    }
    text.push_str("]\n");
    text
}

/// An alias bomb is refused at its anchor, quickly, having allocated
/// nothing near its expansion: the screen walks parser events, so the
/// deserialiser that would expand it never runs.
#[test]
fn an_alias_bomb_is_refused_before_anything_is_expanded() {
    let bomb = alias_bomb(400_000, 150_000);
    assert!(
        (840_000..900_000).contains(&bomb.len()),
        "{} bytes",
        bomb.len()
    );
    let started = std::time::Instant::now();
    let (bytes, result) = allocated_by(|| compile_text(f(), &bomb));
    let took = started.elapsed();
    let e = result.unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.yaml:8: anchors and aliases are not accepted in a policy: line 8 (an anchor, `&` at column 13)"
    );
    assert_eq!(e.line, 8);
    // The expansion is 150,000 × 400 KB = 60 GB; the screen holds the
    // document and its one scalar, a few megabytes at most.
    assert!(
        bytes < 16 << 20,
        "{bytes} bytes allocated to refuse an {} byte document",
        bomb.len()
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "took {took:?} to refuse"
    );
}

/// Any anchor or alias is refused, at its own line, with the same words;
/// an alias without its anchor too (the parser calls it an unknown anchor).
#[test]
fn a_small_anchor_or_alias_is_refused_at_its_line() {
    let anchored = GOOD
        .replace("countries: [CH]", "countries: &c [CH]")
        .replace("countries: [HU]", "countries: *c");
    assert_eq!(
        error_of(&anchored),
        "p.yaml:9: anchors and aliases are not accepted in a policy: line 9 (an anchor, `&` at column 16)"
    );
    let scalar = GOOD.replace("mode: enforce", "mode: &m enforce");
    assert!(
        error_of(&scalar).starts_with(
            "p.yaml:5: anchors and aliases are not accepted in a policy: line 5 (an anchor"
        ),
        "{}",
        error_of(&scalar)
    );
    let alias = GOOD.replace("countries: [HU]", "countries: *c");
    assert_eq!(
        error_of(&alias),
        "p.yaml:14: anchors and aliases are not accepted in a policy: line 14 (an alias, `*` at column 16)"
    );
    // In a second document, at its line in the file.
    let second = format!("{GOOD}---\n{}", anchored.replace("llm-eu-only", "two"));
    assert!(
        error_of(&second).starts_with("p.yaml:25: anchors and aliases are not accepted"),
        "{}",
        error_of(&second)
    );
    // A merge key needs an alias: refused the same way.
    let merge = GOOD.replace(
        "  deny:\n    countries: [HU]",
        "  deny:\n    <<: *c\n    countries: [HU]",
    );
    assert!(
        error_of(&merge).contains("anchors and aliases are not accepted in a policy: line 14"),
        "{}",
        error_of(&merge)
    );
}

/// Nesting is bounded at the event level too, before the crate's own
/// recursion limit: a deep document is refused at the line it goes too deep.
#[test]
fn deep_nesting_is_refused_with_the_limit() {
    let deep = format!(
        "{}\n",
        GOOD.replace(
            "countries: [CH]",
            &format!(
                "countries: {}{}",
                "[".repeat(model::MAX_DEPTH),
                "]".repeat(model::MAX_DEPTH)
            )
        )
    );
    let e = error_of(&deep);
    assert!(
        e.starts_with("p.yaml:9: nested more than 32 levels deep at column "),
        "{e}"
    );
    // A megabyte of `[`: the parser's scanner, which runs ahead of its
    // events, stops it first with its own limit.
    let (bytes, e) = allocated_by(|| error_of(&"[".repeat(1 << 20)));
    assert!(
        e.starts_with("p.yaml:1: nested more than 32 levels deep")
            || e.starts_with("p.yaml:1: not valid YAML at column 256: recursion limit exceeded"),
        "{e}"
    );
    assert!(bytes < 16 << 20, "{bytes} bytes");
}

/// A file that is not a policy (what a link to `/etc/shadow` reads) is
/// refused with where and what was expected, never with what it holds.
#[test]
fn errors_never_show_the_values_of_a_file_that_is_not_a_policy() {
    let d = tempfile::tempdir().unwrap();
    let secret = "S3cr3tSalt";
    let cases = [
        // /etc/shadow: one plain scalar of every line.
        format!("root:$6${secret}$Zq1x9.hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"),
        // A token file.
        format!("ghp_{secret}0123456789\n"),
        // Quoted, and a number.
        format!("\"{secret}\"\n"),
        "8231923923\n".to_string(),
        // A key file: its first key is not a policy's.
        format!("{secret}: value\n"),
        format!("password: {secret}\n"),
        // A policy-shaped document with a value of the wrong type.
        GOOD.replace(
            "  mode: enforce\n",
            &format!("  mode: enforce\n  judgeLinkLocal: {secret}\n"),
        ),
        GOOD.replace(
            "metadata: {name: llm-eu-only}",
            &format!("metadata: {{name: [{secret}]}}"),
        ),
    ];
    for (i, text) in cases.iter().enumerate() {
        let file = d.path().join(format!("s{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let e = compile_file(&file).unwrap_err().to_string();
        assert!(
            !e.contains(secret) && !e.contains("8231923923") && !e.contains("password"),
            "case {i} shows the content: {e}"
        );
        assert!(e.starts_with(&format!("{}:", file.display())), "{e}");
        assert!(
            e.contains("(not shown)") || e.contains("invalid type: sequence, expected a string"),
            "case {i}: {e}"
        );
    }
    // A shadow line ends in ':', so YAML reads a mapping: its key is the
    // unknown field, and not repeated.
    let e = compile_file(&d.path().join("s0.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "s0.yaml:1: unknown field (not shown), expected one of `apiVersion`, `kind`, `metadata`, `spec` (column 1)"
        ),
        "{e}"
    );
    let e = compile_file(&d.path().join("s1.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "s1.yaml:1: invalid type: a string (not shown), expected struct PolicyDoc (column 1)"
        ),
        "{e}"
    );
    let e = compile_file(&d.path().join("s4.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "s4.yaml:1: unknown field (not shown), expected one of `apiVersion`, `kind`, `metadata`, `spec` (column 1)"
        ),
        "{e}"
    );
    let e = compile_file(&d.path().join("s6.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("s6.yaml:6: spec.judgeLinkLocal: invalid type: a string (not shown), expected a boolean (column 19)"),
        "{e}"
    );
}

/// The policy directory follows links only inside itself: a link to a file
/// outside (`/etc/shadow`, or a policy elsewhere) is refused unread, while a
/// Kubernetes ConfigMap mount (`name -> ..data/name`, `..data -> ..TIMESTAMP`
/// inside the directory) is read as before.
#[test]
fn links_out_of_the_policy_directory_are_refused_and_a_configmap_is_read() {
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().join("elsewhere.yaml");
    std::fs::write(&elsewhere, GOOD).unwrap();
    assert!(
        compile_file(&elsewhere).is_ok(),
        "a good policy, read directly"
    );

    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let link = dir.join("shadow.yaml");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let files = policy_files(dir).unwrap();
    assert_eq!(
        files,
        std::slice::from_ref(&link),
        "listed, so its refusal is said"
    );
    let e = compile_dir_file(dir, &link).unwrap_err();
    let real = elsewhere.canonicalize().unwrap();
    assert_eq!(e.line, 0);
    assert!(
        e.reason.starts_with(&format!(
            "leads to {}, outside the policy directory {}; not read",
            real.display(),
            dir.canonicalize().unwrap().display()
        )),
        "{e}"
    );
    assert!(!e.to_string().contains("llm-eu-only"), "{e}");
    // The same file read on its own (`policy check FILE`) is not refused.
    assert!(compile_file(&link).is_ok());
    std::fs::remove_file(&link).unwrap();

    // A ConfigMap mount.
    let stamp = "..2026_05_01_12_00_00.123456789";
    std::fs::create_dir(dir.join(stamp)).unwrap();
    std::fs::write(dir.join(stamp).join("p.yaml"), GOOD).unwrap();
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", dir.join("p.yaml")).unwrap();
    let files = policy_files(dir).unwrap();
    assert_eq!(files, [dir.join("p.yaml")]);
    let p = compile_dir_file(dir, &files[0]).unwrap();
    assert_eq!(p[0].name, "llm-eu-only");
    // The directory named through a link of its own is the same directory.
    let via = outside.path().join("policies");
    std::os::unix::fs::symlink(dir, &via).unwrap();
    assert!(compile_dir_file(&via, &via.join("p.yaml")).is_ok());

    // A ConfigMap-shaped mount whose `..data` leads out is refused.
    std::fs::remove_file(dir.join("..data")).unwrap();
    std::fs::write(outside.path().join("p.yaml"), GOOD).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.join("..data")).unwrap();
    let e = compile_dir_file(dir, &dir.join("p.yaml")).unwrap_err();
    assert!(e.reason.contains("outside the policy directory"), "{e}");
    // A dangling link still says why it cannot be read.
    std::os::unix::fs::symlink("nowhere.yaml", dir.join("gone.yaml")).unwrap();
    let e = compile_dir_file(dir, &dir.join("gone.yaml")).unwrap_err();
    assert!(e.reason.starts_with("cannot read: No such file"), "{e}");
}

const WITH_BASELINE: &str = "apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata:
  name: web
spec:
  mode: monitor
  selector:
    cgroupPaths: [/app/*]
  baseline: BASELINE
";

const A_BASELINE: &str = "apiVersion: egress-monitor.io/v1
kind: EgressBaseline
metadata:
  name: web-baseline
spec:
  workloads:
    - cgroup: /app/web
      countries: [DE]
";

fn policy_naming(baseline: &str) -> String {
    WITH_BASELINE.replace("BASELINE", baseline)
}

/// `spec.baseline` is read beside the policy and checked when it loads;
/// a baseline file in the policy directory is not a policy.
#[test]
fn a_policy_reads_and_checks_its_baseline() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("web.yaml"), policy_naming("web-baseline.yaml")).unwrap();
    std::fs::write(dir.join("web-baseline.yaml"), A_BASELINE).unwrap();
    assert_eq!(
        policy_files(dir).unwrap().len(),
        2,
        "both are listed; the baseline is passed over when compiled"
    );
    let none = compile_dir_file(dir, &dir.join("web-baseline.yaml")).unwrap();
    assert!(none.is_empty(), "a baseline file holds no policy");
    let p = judge_file(
        Some(dir),
        &dir.join("web.yaml"),
        &crate::cloud::CloudRanges::default(),
    )
    .unwrap();
    let b = p[0].baseline.as_ref().expect("read");
    assert_eq!(
        (b.name.as_str(), b.given.as_str()),
        ("web-baseline", "web-baseline.yaml")
    );
    assert_eq!(&*b.text, A_BASELINE);
    // A text from a request names a file the daemon does not read.
    let t = compile_text(Path::new("web.yaml"), &policy_naming("/etc/shadow")).unwrap();
    assert!(t[0].baseline.is_none());
    // A policy recorded in force keeps its rules when its baseline is gone.
    let r = compile_recorded(&dir.join("web.yaml"), &policy_naming("gone.yaml")).unwrap();
    assert!(r[0].baseline.is_none());
}

/// Every way a baseline reference can be wrong fails the policy's file,
/// at the line of `baseline:`, with the reason.
#[test]
fn a_wrong_baseline_fails_its_policy() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(outside.path().join("b.yaml"), A_BASELINE).unwrap();
    std::os::unix::fs::symlink(outside.path().join("b.yaml"), dir.join("out.yaml")).unwrap();
    std::fs::write(dir.join("broken.yaml"), A_BASELINE.replace("[DE]", "[XX]")).unwrap();
    std::fs::write(
        dir.join("empty.yaml"),
        A_BASELINE.replace(
            "  workloads:\n    - cgroup: /app/web\n      countries: [DE]\n",
            "  workloads: []\n",
        ),
    )
    .unwrap();
    let cases = [
        ("missing.yaml", "web.yaml", 9, "No such file"),
        (
            "/etc/egress/b.yaml",
            "web.yaml",
            9,
            "is not a file relative to the policy's directory",
        ),
        ("out.yaml", "web.yaml", 9, "outside the policy directory"),
        ("empty.yaml", "web.yaml", 9, "lists no workload"),
        // The baseline's own error, at its own file and line.
        ("broken.yaml", "broken.yaml", 8, "XX"),
    ];
    for (given, file, line, reason) in cases {
        std::fs::write(dir.join("web.yaml"), policy_naming(given)).unwrap();
        let e = compile_dir_file(dir, &dir.join("web.yaml")).unwrap_err();
        assert!(e.file.ends_with(file), "{given}: {e}");
        assert_eq!(e.line, line, "{given}: {e}");
        assert!(e.reason.contains(reason), "{given}: {e}");
    }
    // A baseline among the documents of a policy file.
    std::fs::write(
        dir.join("mixed.yaml"),
        format!("{}---\n{A_BASELINE}", policy_naming("empty.yaml")),
    )
    .unwrap();
    let errors = judge_file(
        Some(dir),
        &dir.join("mixed.yaml"),
        &crate::cloud::CloudRanges::default(),
    )
    .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.reason.contains("a baseline is a file of its own")),
        "{errors:?}"
    );
}
