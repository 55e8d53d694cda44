//! Bad input to the daemon and the CLI: a clear error, a non-zero exit,
//! never a panic.
use std::process::Command;

use integration_tests::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(daemon_bin())
        .args(args)
        .output()
        .expect("run egress-monitor");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn daemon_refuses_a_missing_policy_directory() {
    let (ok, err) = run(&[
        "daemon",
        "--policies",
        "/nonexistent/policies",
        "--geoip",
        "/nonexistent.mmdb",
    ]);
    assert!(!ok);
    assert!(
        err.contains("policy directory /nonexistent/policies does not exist"),
        "{err}"
    );
}

/// An interval between whole reads of the flow tables outside 1 s..1 day
/// is refused before anything is made (no state directory, no pins).
#[test]
fn daemon_refuses_a_whole_read_interval_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for bad in ["0.5", "0", "86401", "-3"] {
        let (ok, err) = run(&[
            "daemon",
            "--state-dir",
            state.to_str().unwrap(),
            &format!("--flow-whole-read-interval={bad}"),
        ]);
        assert!(!ok, "{bad} accepted");
        assert!(
            err.contains(&format!(
                "--flow-whole-read-interval must be between 1 and 86400 seconds, not {}",
                bad.parse::<f64>().unwrap()
            )),
            "{bad}: {err}"
        );
        assert!(!state.exists(), "{bad}: the state directory was made");
    }
    let (ok, err) = run(&["daemon", "--flow-whole-read-interval", "soon"]);
    assert!(!ok);
    assert!(err.contains("--flow-whole-read-interval"), "{err}");
}

#[test]
fn daemon_refuses_a_missing_or_broken_database() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = run(&[
        "daemon",
        "--policies",
        dir.path().to_str().unwrap(),
        "--geoip",
        "/nonexistent.mmdb",
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot read GeoIP database /nonexistent.mmdb"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is said once: {err}"
    );
    assert!(
        !dir.path().join("s").exists(),
        "nothing (state directory, node key, store) is created before the database is read"
    );
    let bad = dir.path().join("bad.mmdb");
    std::fs::write(&bad, b"not a database").unwrap();
    let (ok, err) = run(&[
        "daemon",
        "--policies",
        dir.path().to_str().unwrap(),
        "--geoip",
        bad.to_str().unwrap(),
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("is not a MaxMind-format database"), "{err}");
}

#[test]
fn daemon_refuses_a_cgroup_root_outside_cgroup2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db.mmdb"),
        monitor::geo::writer::country_code_db(&TEST_DB),
    )
    .unwrap();
    let (ok, err) = run(&[
        "daemon",
        "--policies",
        dir.path().to_str().unwrap(),
        "--geoip",
        dir.path().join("db.mmdb").to_str().unwrap(),
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
        "--cgroup-root",
        "/tmp",
    ]);
    assert!(!ok);
    assert!(err.contains("is not inside the cgroup2 mount"), "{err}");
}

#[test]
fn policy_check_reports_file_line_reason_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    let text = "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/a\"]}\n  allow:\n    countries: [DE]\n";
    std::fs::write(&good, text).unwrap();
    std::fs::write(
        &bad,
        text.replace("[DE]", "[DE, ZZ]")
            .replace("name: x", "name: y"),
    )
    .unwrap();
    let out = Command::new(daemon_bin())
        .args(["policy", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("policy x (enforce): ok"), "{stdout}");
    assert!(
        stdout.contains("allowed        1 countries: DE"),
        "{stdout}"
    );
    let out = Command::new(daemon_bin())
        .args(["policy", "check"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:8: \"ZZ\" is not an ISO 3166-1 alpha-2 country code",
            bad.display()
        )
    );
    // With a database it counts prefixes per allowed region.
    let db = dir.path().join("db.mmdb");
    std::fs::write(&db, monitor::geo::writer::country_code_db(&TEST_DB)).unwrap();
    let out = Command::new(daemon_bin())
        .args(["policy", "check", "--geoip"])
        .arg(&db)
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("geo prefixes   4 in"), "{stdout}");
    assert!(
        stdout.contains("2 allowed, 0 denied explicitly, 2 denied by default"),
        "{stdout}"
    );
    assert!(stdout.contains("allowed by region  DE 2"), "{stdout}");
}

/// Without root the daemon says so first, before it creates anything.
#[test]
fn daemon_without_root_refuses_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(daemon_bin())
        .args(["daemon", "--policies"])
        .arg(dir.path())
        .arg("--geoip")
        .arg("/nonexistent.mmdb")
        .arg("--state-dir")
        .arg(&state)
        .arg("--pin-dir")
        .arg(dir.path().join("pins"))
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "{err}");
    assert!(!state.exists(), "no state directory, node key or store");
}

/// `--require-policies`: an empty directory, or one whose only file is
/// broken, refuses the start (naming the file's problem) before anything
/// is created.
#[test]
fn daemon_with_require_policies_refuses_to_start_with_nothing_valid() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        dir.path().join("db.mmdb"),
        monitor::geo::writer::country_code_db(&TEST_DB),
    )
    .unwrap();
    let start = || {
        run(&[
            "daemon",
            "--require-policies",
            "--policies",
            policies.to_str().unwrap(),
            "--geoip",
            dir.path().join("db.mmdb").to_str().unwrap(),
            "--state-dir",
            dir.path().join("s").to_str().unwrap(),
        ])
    };
    let (ok, err) = start();
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "--require-policies: no valid policy in {} (no *.yaml file)",
            policies.display()
        )),
        "{err}"
    );
    std::fs::write(
        policies.join("only.yaml"),
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/a\"]}\n  allow:\n    countries: [ZZ]\n",
    )
    .unwrap();
    let (ok, err) = start();
    assert!(!ok);
    assert!(err.contains("1 file(s), none valid"), "{err}");
    assert!(
        err.contains("only.yaml:8: \"ZZ\" is not an ISO 3166-1 alpha-2 country code"),
        "{err}"
    );
    assert!(!dir.path().join("s").exists(), "nothing created: {err}");
}

/// What compiles but would not do what its author meant is warned about
/// (exit status still 0); codes people reach for get a hint; a second
/// policy of one name is reported at its own line; a missing file has no
/// line 0.
#[test]
fn policy_check_warns_about_policies_that_would_surprise() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.yaml");
    std::fs::write(
        &host,
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: host}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/**\"]}\n  allow:\n    countries: [DE]\n",
    )
    .unwrap();
    let out = Command::new(daemon_bin())
        .args(["policy", "check"])
        .arg(&host)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not a failure: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3: warning: policy host: enforce over",
            host.display()
        )) && stderr.contains("without allowing 127.0.0.0/8, ::1/128, 10.0.0.0/8")
            && stderr.contains("would cut the selected host off"),
        "{stderr}"
    );

    // A selector outside the daemon's cgroup root can never match.
    let cg = ScratchCgroup::new("emt-lint");
    let out = Command::new(daemon_bin())
        .args(["policy", "check", "--cgroup-root"])
        .arg(cg.path())
        .arg(&host)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `/**` covers everything, the root too: only the host warning.
    assert!(!stderr.contains("outside the cgroup root"), "{stderr}");
    let sys = dir.path().join("sys.yaml");
    std::fs::write(
        &sys,
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: sys}\nspec:\n  mode: monitor\n  selector: {cgroupPaths: [\"/system.slice/crm.service\"]}\n  allow:\n    countries: [DE]\n",
    )
    .unwrap();
    let out = Command::new(daemon_bin())
        .args(["policy", "check", "--cgroup-root"])
        .arg(cg.path())
        .arg(&sys)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rel = format!("/{}", cg.path().file_name().unwrap().to_string_lossy());
    assert!(
        out.status.success()
            && stderr.contains(&format!(
                "selector cgroupPaths \"/system.slice/crm.service\" is outside the cgroup root {rel}"
            )),
        "{stderr}"
    );

    // UK, a duplicate name at its own line, a missing file.
    let uk = dir.path().join("uk.yaml");
    std::fs::write(
        &uk,
        std::fs::read_to_string(&sys)
            .unwrap()
            .replace("[DE]", "[UK]"),
    )
    .unwrap();
    let (ok, err) = run(&["policy", "check", uk.to_str().unwrap()]);
    assert!(
        !ok && err.contains("\"UK\" is not an ISO 3166-1 alpha-2 country code; did you mean GB"),
        "{err}"
    );
    let two = dir.path().join("two.yaml");
    let sys_text = std::fs::read_to_string(&sys).unwrap();
    std::fs::write(&two, format!("{sys_text}---\n{sys_text}")).unwrap();
    let (ok, err) = run(&["policy", "check", two.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}:12: policy name \"sys\" is also defined at {}:3",
            two.display(),
            two.display()
        )),
        "{err}"
    );
    let (ok, err) = run(&["policy", "check", "/nonexistent/p.yaml"]);
    assert!(
        !ok && err.contains("/nonexistent/p.yaml: cannot read: No such file"),
        "{err}"
    );
    assert!(!err.contains(":0:"), "{err}");
}

/// `policy explain --offline`: the judging policy (nearest selected
/// ancestor), the place, the rule and the list entry that decided, exit 3
/// when refused; a cgroup no policy selects is not judged; a full cgroupfs
/// path is the same cgroup; data a policy needs and was not given is
/// warned about; the sources without --offline are refused.
#[test]
fn policy_explain_says_what_decides_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.mmdb");
    std::fs::write(&db, monitor::geo::writer::country_code_db(&TEST_DB)).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.yaml"),
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: llm}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/llm.slice\"]}\n  allow:\n    countries: [DE]\n    cidrs: [10.0.0.0/8]\n  deny:\n    domains: [\"*.openai.com\"]\n",
    )
    .unwrap();
    let explain = |args: &[&str]| {
        let out = Command::new(daemon_bin())
            .args(["policy", "explain", "--offline"])
            .args(args)
            .arg("--policies")
            .arg(&policies)
            .arg("--geoip")
            .arg(&db)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = explain(&[US_V4, "--cgroup", "/llm.slice/worker"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("policy     llm (enforce) at ")
            && text.contains("p.yaml:3, selecting /llm.slice")
            && text.contains("place      US")
            && text.contains("decision   denied, rule default: nothing in the policy allows US"),
        "{text}"
    );
    let (code, text) = explain(&[DE_V4, "--cgroup", "/llm.slice/worker"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("allowed, rule country: its place DE is allowed"),
        "{text}"
    );
    let (code, text) = explain(&[DE_V4, "--cgroup", "/llm.slice", "--name", "api.openai.com"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("name       api.openai.com: denied by its domain rules")
            && text.contains("denied, rule domain: the name matches deny domain *.openai.com"),
        "{text}"
    );
    let (_, text) = explain(&["10.1.2.3", "--cgroup", "/llm.slice"]);
    assert!(
        text.contains("allowed, rule cidr: allow CIDR 10.0.0.0/8"),
        "{text}"
    );
    let (_, text) = explain(&["fe80::1", "--cgroup", "/llm.slice"]);
    assert!(text.contains("fe80::/10 never leaves the link"), "{text}");
    let (code, text) = explain(&[US_V4, "--cgroup", "/system.slice/x.service"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("not judged: no policy"), "{text}");
    let (_, text) = explain(&[US_V4, "--cgroup", "/llm.slice", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].as_str()),
        (Some("denied"), Some("default"))
    );
    // The cgroup as its full cgroupfs path: the same answer.
    let mount = cgroup2_mount();
    let full = format!("{}/llm.slice/worker", mount.display());
    let (code, text) = explain(&[US_V4, "--cgroup", &full]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains(&format!(
            "{US_V4} from /llm.slice/worker (offline, from files)"
        )) && text.contains("selecting /llm.slice"),
        "{text}"
    );
    // Data the policy uses and the answer was not given: said.
    assert!(
        text.contains("warning: policy llm has domain rules but no name is known"),
        "{text}"
    );
    std::fs::write(
        policies.join("q.yaml"),
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: crm}\nspec:\n  mode: monitor\n  selector: {cgroupPaths: [\"/crm.slice\"]}\n  allow:\n    cloudRegions: [\"aws:eu-*\"]\n",
    )
    .unwrap();
    // An empty cloud directory: the installed default is not used.
    let no_cloud = dir.path().join("no-cloud");
    std::fs::create_dir(&no_cloud).unwrap();
    let (code, text) = explain(&[
        US_V4,
        "--cgroup",
        "/crm.slice",
        "--cloud-ranges",
        no_cloud.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("warning: policy crm has cloudRegions rules but no cloud ranges are loaded"),
        "{text}"
    );
    // Bad input: a clear error.
    let (code, text) = explain(&["not-an-ip", "--cgroup", "/llm.slice"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid value 'not-an-ip'"), "{text}");
    let (code, text) = explain(&[US_V4, "--cgroup", "/llm.slice/../crm.slice"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("a cgroup path has no '.' or '..' components"),
        "{text}"
    );
    let (code, text) = explain(&[US_V4, "--pod", "nginx-7d4b"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("pod UID \"nginx-7d4b\" is not a Kubernetes UID"),
        "{text}"
    );
    // The sources are for --offline: without it they are refused, never
    // silently ignored for the daemon's.
    let out = Command::new(daemon_bin())
        .args([
            "policy",
            "explain",
            US_V4,
            "--cgroup",
            "/llm.slice",
            "--policies",
        ])
        .arg(&policies)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--offline"), "{text}");
}

/// `policy check` gives the daemon's judgement of a whole set, every error
/// of every file: what does not compile (each document of a file), a
/// cloud-region typo, rules no loaded data can judge (cloudRegions without
/// cloud ranges, domains with only an untrusted loopback resolver), a
/// cgroup two policies select; a selector outside --cgroup-root and a
/// country the database has no address in are warnings. The daemon with --require-policies refuses the same set.
#[test]
fn policy_check_reports_every_error_of_every_file_as_the_daemon_judges() {
    let env = TestEnv::new();
    let doc = |name: &str, selector: &str, body: &str| {
        format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  mode: monitor\n  selector:\n    cgroupPaths: [\"{selector}\"]\n{body}"
        )
    };
    let (sel, root) = (env.rel("sel"), env.rel(""));
    env.write_policy(
        "a.yaml",
        &doc(
            "a",
            &sel,
            "  allow:\n    countries: [DE]\n    cloudRegions: [\"aws:eu-west-3\"]\n    domains: [api.example.com]\n",
        ),
    );
    env.write_policy(
        "b.yaml",
        &doc("b", &format!("{root}/*"), "  allow:\n    countries: [FR]\n"),
    );
    let c1 = doc("c1", &sel, "  allow:\n    countries: [UK]\n");
    let c2 = doc(
        "c2",
        &sel,
        "  deny:\n    cloudRegions: [\"aws:eu-west3\"]\n",
    );
    env.write_policy("c.yaml", &format!("{c1}---\n{c2}"));
    env.write_policy(
        "d.yaml",
        &doc(
            "d",
            "/system.slice/emt-nowhere.service",
            "  allow:\n    countries: [DE]\n",
        ),
    );
    let empty = tempfile::tempdir().unwrap();
    let dir = env.policy_dir();
    let at = |f: &str| dir.join(f).display().to_string();
    let cgroup_root = env.cgroup("").display().to_string();
    let geoip = env.geoip().display().to_string();
    let sources = [
        "--geoip",
        &geoip,
        "--cgroup-root",
        &cgroup_root,
        "--cloud-ranges",
        empty.path().to_str().unwrap(),
        "--dns-resolver",
        "127.0.0.53/32",
    ];
    let check = |extra: &[&str]| {
        let out = Command::new(daemon_bin())
            .args(["policy", "check"])
            .args(sources)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the set passed: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (stdout, stderr) = check(&[dir.to_str().unwrap()]);
    for expected in [
        format!("{}:9: \"UK\" is not an ISO 3166-1 alpha-2 country code; did you mean GB", at("c.yaml")),
        format!(
            "{}:19: deny.cloudRegions \"aws:eu-west3\": matches no region of aws",
            at("c.yaml")
        ),
        format!(
            "{}:3: policy a: cloudRegions aws:eu-west-3 cannot be judged: no cloud ranges are loaded",
            at("a.yaml")
        ),
        format!(
            "{}:3: policy a: 1 domain rules cannot be judged: names are learned from only \
             loopback resolvers (127.0.0.53/32) without --dns-trust-loopback",
            at("a.yaml")
        ),
        format!(
            "selector conflict: cgroup {sel} is selected by policies a and b; a judges it"
        ),
        format!("(at {}:3, {}:3)", at("a.yaml"), at("b.yaml")),
        // Countries against the database: the test database has no FR.
        format!(
            "{}:3: warning: policy b: countries allow FR have no address in the country \
             database {geoip}: they match nothing",
            at("b.yaml")
        ),
        format!(
            "{}:3: warning: policy d: selector cgroupPaths \"/system.slice/emt-nowhere.service\" \
             is outside the cgroup root {root}",
            at("d.yaml")
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("did you mean eu-west-3"), "{stderr}");
    for ok in ["policy b (monitor): ok", "policy d (monitor): ok"] {
        assert!(stdout.contains(ok), "{stdout}");
    }
    // The daemon's directory by default (--policies), the same judgement.
    assert_eq!(check(&["--policies", dir.to_str().unwrap()]).1, stderr);

    // The daemon refuses it at the start, before creating anything.
    let state = empty.path().join("state");
    let (ok, err) = run(&[
        &[
            "daemon",
            "--require-policies",
            "--policies",
            dir.to_str().unwrap(),
        ],
        &sources[..],
        &["--state-dir", state.to_str().unwrap()],
    ]
    .concat());
    assert!(!ok);
    for expected in [
        format!(
            "--require-policies: policies in {} have rules no loaded data can judge",
            dir.display()
        ),
        format!(
            "{}:3: policy a: cloudRegions aws:eu-west-3 cannot be judged",
            at("a.yaml")
        ),
        format!(
            "{}:3: policy a: 1 domain rules cannot be judged",
            at("a.yaml")
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!state.exists(), "nothing created: {err}");
}

/// Query, export and verify errors name the real fault: a month out of
/// range (not where a duration parser stumbled), `(now)` for an open end,
/// GB for `uk`, and a bundle that was gzipped.
#[test]
fn queries_and_verify_name_the_real_fault() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let fails = |args: &[&str]| {
        let out = env.cli(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        eprintln!("{args:?}: {err}");
        err
    };
    let err = fails(&["events", "--since", "2026-13-01"]);
    assert!(
        err.contains("\"2026-13-01\": month 13 is out of range (1-12)"),
        "{err}"
    );
    assert!(!err.contains("invalid character"), "{err}");
    let err = fails(&["events", "--since", "2099-01-01"]);
    assert!(
        err.contains("(now) is before since (\"2099-01-01\")"),
        "{err}"
    );
    let err = fails(&["flows", "--country", "uk"]);
    assert!(
        err.contains(
            "\"uk\" is not an ISO 3166-1 alpha-2 country code; did you mean GB (the United Kingdom)?"
        ),
        "{err}"
    );

    let bundle = env.dir.path().join("bundle.tar");
    let state = env.dir.path().join("state");
    let (ok, err) = run(&[
        "export",
        "--since",
        "10m",
        "--out",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let gz = Command::new("gzip").arg(&bundle).status().unwrap();
    assert!(gz.success(), "gzip the bundle");
    let out = Command::new(daemon_bin())
        .arg("verify")
        .arg(bundle.with_extension("tar.gz"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("verify: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a tar (gzip?): a bundle is a plain tar; decompress it first (gunzip)"),
        "{err}"
    );
}
