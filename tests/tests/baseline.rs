//! Baselines against the real daemon and kernel: `baseline record` writes
//! what a workload reached from the store, `baseline diff` gates on what
//! it reaches beyond (exit 3), and bad baselines are named by file:line.
use std::{path::Path, process::Command, time::Duration};

use integration_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn state(env: &TestEnv) -> std::path::PathBuf {
    env.dir.path().join("state")
}

/// Now, as the store's clock reads it (RFC 3339, for --since).
fn now() -> String {
    monitor::events::rfc3339_nanos(i128::from(monitor::store::now_nanos()))
}

/// `egress-monitor baseline ARGS --state-dir <the env's>`.
fn baseline(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(daemon_bin())
        .arg("baseline")
        .args(args)
        .arg("--state-dir")
        .arg(state(env))
        .output()
        .expect("run baseline")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `baseline diff FILE --since SINCE -o json`: its exit code and lines.
fn diff(env: &TestEnv, file: &Path, since: &str) -> (Option<i32>, Vec<Value>) {
    let out = baseline(
        env,
        &[
            "diff",
            file.to_str().unwrap(),
            "--since",
            since,
            "-o",
            "json",
        ],
    );
    assert!(
        out.stderr.is_empty(),
        "baseline diff said: {}",
        text(&out.stderr)
    );
    let lines = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out.status.code(), lines)
}

/// One TCP connect from `sel` to `ip`, in the store as a flow before it
/// returns.
fn connect(env: &TestEnv, ip: &str, made: &mut u64) {
    let p = env.probe("sel", &["tcp", ip, &PORT.to_string()]);
    assert!(p.ok, "monitor mode lets {ip} through: {:?}", p.raw);
    *made += 1;
    env.wait_flow_count(&format!("connects to {ip}"), *made, WAIT, |f| {
        s(f, "dst_ip") == ip
    });
}

/// A baseline recorded after traffic to DE lists DE for the workload and
/// reads back; a connect to US is then exactly one new country (exit 3),
/// and a window with DE alone is no drift (exit 0).
#[test]
fn a_new_country_is_drift_and_the_known_one_is_not() {
    let env = TestEnv::started("monitor", "DE", &[]);
    let sel = env.rel("sel");
    let start = now();
    let (mut de, mut us) = (0, 0);
    connect(&env, DE_V4, &mut de);
    let file = env.dir.path().join("web.yaml");
    let out = baseline(
        &env,
        &[
            "record",
            "--since",
            &start,
            "--cgroup",
            &sel,
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "record: {}", text(&out.stderr));
    eprintln!("{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with(&format!(
            "wrote {}: 1 workload, 1 destination from 1 flow of ",
            file.display()
        )),
        "{}",
        text(&out.stdout)
    );
    let yaml = std::fs::read_to_string(&file).unwrap();
    eprintln!("{yaml}");
    let body: Vec<&str> = yaml.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body[..8],
        [
            "apiVersion: egress-monitor.io/v1",
            "kind: EgressBaseline",
            "metadata:",
            "  name: web",
            "spec:",
            "  workloads:",
            &format!("    - cgroup: {sel}"),
            "      countries:",
        ],
        "{yaml}"
    );
    assert_eq!(body.len(), 9, "one destination only: {yaml}");
    assert!(
        body[8].starts_with("        - DE  # 1 attempt, first 20"),
        "{yaml}"
    );
    let parsed = monitor::baseline::model::load(&file).expect("the recorded baseline reads back");
    assert_eq!(parsed.name, "web");
    let known = &parsed.workloads[&monitor::baseline::Workload::Cgroup(sel.clone())];
    assert_eq!(known.countries, ["DE"]);
    assert!(known.names.is_empty() && known.cidrs.is_empty() && known.cloud_regions.is_empty());

    // A second country: drift, exactly that one.
    let before_us = now();
    connect(&env, US_V4, &mut us);
    let (code, lines) = diff(&env, &file, &before_us);
    assert_eq!(code, Some(3), "drift exits 3: {lines:#?}");
    assert_eq!(
        lines,
        [json!({
            "workload": {"cgroup": sel},
            "kind": "country",
            "value": "US",
            "baseline": ["DE"],
            "attempts": 1,
            "first_seen": lines[0]["first_seen"],
            "last_seen": lines[0]["last_seen"],
            "destinations": [format!("{US_V4}:{PORT}/tcp")],
        })],
    );
    let table = baseline(
        &env,
        &["diff", file.to_str().unwrap(), "--since", &before_us],
    );
    eprintln!("{}", text(&table.stdout));
    assert_eq!(table.status.code(), Some(3));
    assert!(text(&table.stdout).contains("1 new destination outside baseline web"));
    // The whole window: the DE connect is known, the US one still new.
    let (code, lines) = diff(&env, &file, &start);
    assert_eq!((code, lines.len()), (Some(3), 1), "{lines:#?}");

    // After it, DE only: no drift.
    let after_us = now();
    connect(&env, DE_V4, &mut de);
    let (code, lines) = diff(&env, &file, &after_us);
    assert_eq!((code, lines), (Some(0), vec![]));
    let table = baseline(
        &env,
        &["diff", file.to_str().unwrap(), "--since", &after_us],
    );
    eprintln!("{}", text(&table.stdout));
    assert_eq!(table.status.code(), Some(0));
    assert!(text(&table.stdout).starts_with("no drift from baseline web in "));
}

/// A broken baseline is refused with file:line and the reason (exit 1,
/// not the drift status); a recorded baseline is not overwritten without
/// --force; a bad window is named.
#[test]
fn bad_baselines_and_arguments_are_named() {
    let env = TestEnv::started("monitor", "DE", &[]);
    let file = env.dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressBaseline\nmetadata:\n  name: b\nspec:\n  workloads:\n    - cgroup: {}\n      countries: [DE, UK]\n",
            env.rel("sel")
        ),
    )
    .unwrap();
    let out = baseline(&env, &["diff", file.to_str().unwrap(), "--since", "1h"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}:8: \"UK\" is not an ISO 3166-1 alpha-2 country code; did you mean GB (the United Kingdom)?\n",
            file.display()
        )
    );
    std::fs::write(&file, "apiVersion: egress-monitor.io/v1\nkind: EgressBaseline\nmetadata: {name: b}\nspec:\n  workloads:\n    - &w {cgroup: x}\n").unwrap();
    let out = baseline(&env, &["diff", file.to_str().unwrap(), "--since", "1h"]);
    assert!(
        text(&out.stderr).starts_with(&format!(
            "error: {}:6: anchors and aliases are not accepted in a baseline",
            file.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let missing = env.dir.path().join("missing.yaml");
    let out = baseline(&env, &["diff", missing.to_str().unwrap(), "--since", "1h"]);
    assert!(
        out.status.code() == Some(1)
            && text(&out.stderr).starts_with(&format!(
                "error: {}: cannot read the baseline: No such file",
                missing.display()
            )),
        "{}",
        text(&out.stderr)
    );
    // --out exists: refused, the file untouched.
    let out = baseline(
        &env,
        &["record", "--since", "1h", "--out", file.to_str().unwrap()],
    );
    assert!(
        !out.status.success()
            && text(&out.stderr).contains("exists; not overwritten (--force replaces it)"),
        "{}",
        text(&out.stderr)
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains("&w"));
    // Nothing in the window for the filter: no empty baseline, which
    // would judge nothing.
    let empty = env.dir.path().join("empty.yaml");
    let out = baseline(
        &env,
        &[
            "record",
            "--since",
            "1h",
            "--cgroup",
            "/nothing/here",
            "--out",
            empty.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.code() == Some(1)
            && text(&out.stderr).contains("matching the filters in the store of ")
            && text(&out.stderr).contains("nothing to record")
            && !empty.exists(),
        "{}",
        text(&out.stderr)
    );
    let out = baseline(
        &env,
        &["record", "--since", "yesterday", "--out", "/tmp/x.yaml"],
    );
    assert!(
        !out.status.success() && text(&out.stderr).starts_with("error: --since: "),
        "{}",
        text(&out.stderr)
    );
}

/// A workload resolves `name` with the test resolver and connects to it
/// over TCP once; returns when the named flow is in the store.
fn resolve_connect(env: &TestEnv, dns: &DnsServer, name: &str) {
    let port = PORT.to_string();
    let r = env.dnsprobe(
        "sel",
        &[
            "resolve-connect",
            "--server",
            &dns.addr,
            "--name",
            name,
            "--connect-port",
            &port,
            "--rounds",
            "1",
            "--tcp",
        ],
    );
    assert_eq!(
        (r["resolved"].as_u64(), r["connected"].as_u64()),
        (Some(1), Some(1)),
        "{name}: {r}"
    );
    env.wait_flow_count(&format!("the connect to {name}"), 1, WAIT, |f| {
        s(f, "dns_name") == name
    });
}

/// Destinations are recorded by the name the workload resolved: a new
/// name is drift compared to the recorded names, and the resolver's own
/// address (no name) is known by its country.
#[test]
fn a_new_name_is_drift() {
    let mut env = TestEnv::new();
    let dns = env.dns_server(&json!({"names": {
        "api.de.test": [{"type": "A", "value": DE_V4, "ttl": 60}],
        "new.us.test": [{"type": "A", "value": US_V4, "ttl": 60}],
    }}));
    env.set_policy("monitor", "DE");
    env.start_daemon(&["--dns-resolver", "198.51.100.2/32"]);
    env.wait_log("policy set generation", WAIT);
    let sel = env.rel("sel");
    let start = now();
    resolve_connect(&env, &dns, "api.de.test");
    let file = env.dir.path().join("names.yaml");
    let out = baseline(
        &env,
        &["record", "--since", &start, "--out", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "record: {}", text(&out.stderr));
    let yaml = std::fs::read_to_string(&file).unwrap();
    eprintln!("{yaml}");
    let body: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split("  #").next().unwrap_or(l))
        .collect();
    assert_eq!(
        body[5..],
        [
            "  workloads:",
            &format!("    - cgroup: {sel}"),
            "      names:",
            "        - api.de.test",
            "      countries:",
            "        - DE",
        ],
        "{yaml}"
    );

    let before = now();
    resolve_connect(&env, &dns, "new.us.test");
    let (code, lines) = diff(&env, &file, &before);
    assert_eq!(code, Some(3), "{lines:#?}");
    let got: Vec<(&str, &str, &Value)> = lines
        .iter()
        .map(|l| (s(l, "kind"), s(l, "value"), &l["baseline"]))
        .collect();
    assert_eq!(
        got,
        [("name", "new.us.test", &json!(["api.de.test"]))],
        "{lines:#?}"
    );
    let table = baseline(&env, &["diff", file.to_str().unwrap(), "--since", &before]);
    eprintln!("{}", text(&table.stdout));
    assert_eq!(table.status.code(), Some(3));
}
