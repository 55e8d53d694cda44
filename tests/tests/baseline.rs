//! Baselines against the real daemon and kernel: `baseline record` writes
//! what a workload reached from the store, `baseline diff` gates on what
//! it reaches beyond (exit 3), a policy naming a baseline raises one drift
//! alert per new destination while the daemon runs, and bad baselines are
//! named by file:line.
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
    let parsed = monitor::baseline::load(&file).expect("the recorded baseline reads back");
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

/// A free loopback port for the daemon's metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The value of a sample line of a /metrics scrape (`NAME{LABELS} VALUE`).
fn sample(port: u16, line_start: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// The drift alerts the store holds since `start` (`events --verdict drift`).
fn stored_alerts(env: &TestEnv, start: &str) -> Vec<Value> {
    json_lines(&env.cli(&[
        "events",
        "--since",
        start,
        "--verdict",
        "drift",
        "-o",
        "json",
    ]))
}

/// Drift while the daemon runs. A policy names a baseline that knows one
/// country (DE) for the workload: the first contact with a second (US)
/// raises exactly one drift alert, with what is new and what it was
/// compared to, on the live stream (`--verdict drift`), in the store, in
/// the metrics, in status and in the signed bundle (which still
/// verifies); another address in the same country, the known country and
/// a restart raise none, and `baseline diff` says the same offline.
#[test]
fn a_new_destination_raises_one_drift_alert_everywhere() {
    let mut env = TestEnv::new();
    let sel = env.rel("sel");
    let baseline_yaml = format!(
        "apiVersion: egress-monitor.io/v1\nkind: EgressBaseline\nmetadata:\n  name: web-baseline\nspec:\n  workloads:\n    - cgroup: {sel}\n      countries: [DE]\n"
    );
    // Beside the policy, as a ConfigMap would hold both.
    std::fs::write(env.policy_dir().join("web-baseline.yaml"), &baseline_yaml).unwrap();
    env.write_policy(
        "p.yaml",
        &env.policy(
            "eu-only",
            "monitor",
            "sel",
            &format!("{}  baseline: web-baseline.yaml\n", allow_countries("DE")),
        ),
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    env.start_daemon(&["--metrics-addr", &addr]);
    let drift_of = |kind: &str| {
        sample(
            port,
            &format!("egress_monitor_drift_alerts_total{{policy=\"eu-only\",kind=\"{kind}\"}}"),
        )
    };
    // Each kind's series is there from the start, at 0.
    assert_eq!(drift_of("country"), Some(0.0));
    assert_eq!(drift_of("name"), Some(0.0));
    let st = env.status();
    assert_eq!(st["policies"][0]["baseline_name"], "web-baseline", "{st:#}");
    let start = now();
    let stream = env.follow_events(&["--verdict", "drift"]);
    let (mut de, mut de2, mut us, mut us2) = (0, 0, 0, 0);
    connect(&env, DE_V4, &mut de);
    connect(&env, US_V4, &mut us);
    stream.wait_lines("one drift alert", WAIT, |l| !l.is_empty());
    // Again (a repeat the kernel counts), another US address (a new
    // decision, the same new country), and the known country.
    connect(&env, US_V4, &mut us);
    connect(&env, US2_V4, &mut us2);
    connect(&env, DE2_V4, &mut de2);
    let alerts = stored_alerts(&env, &start);
    assert_eq!(alerts.len(), 1, "one alert in the store: {alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (
            s(a, "verdict"),
            s(a, "rule"),
            s(a, "policy"),
            s(a, "cgroup_path"),
            s(a, "dst_ip")
        ),
        ("drift", "baseline", "eu-only", sel.as_str(), US_V4),
        "{a:#}"
    );
    let d = &a["drift"];
    assert_eq!(
        (
            s(d, "kind"),
            s(d, "value"),
            s(d, "attempt"),
            s(d, "baseline")
        ),
        ("country", "US", "would_deny", "web-baseline"),
        "{a:#}"
    );
    assert_eq!(
        (d["known"].clone(), d["listed"].clone()),
        (json!(["DE"]), json!(true))
    );
    assert_eq!(s(d, "baseline_sha256").len(), 64);
    let lines = stream.lines();
    assert_eq!(lines.len(), 1, "one alert on the stream: {lines:#?}");
    assert_eq!(lines[0]["drift"], a["drift"]);
    assert_eq!(drift_of("country"), Some(1.0));
    assert_eq!(env.status()["counters"]["drift_alerts"], 1);
    // An alert is about an attempt its decision already counts: no flow.
    let flows = env.flows(&[]);
    assert!(
        flows.iter().all(|f| s(f, "verdict") != "drift"),
        "{flows:#?}"
    );
    // So asking flows for drift is refused, not an empty answer.
    let asked = env.cli(&["flows", "--since", "1h", "--verdict", "drift"]);
    assert!(
        !asked.status.success()
            && text(&asked.stderr).contains("\"drift\" matches no flow")
            && text(&asked.stderr).contains("events --verdict drift"),
        "{}",
        text(&asked.stderr)
    );
    // The table says what was new under the alert's row.
    let table = env.cli_ok(&["events", "--since", &start, "--verdict", "drift"]);
    assert!(
        table.contains("  drift: new country US (would deny by the policy); baseline web-baseline (this workload's entry) knows: DE"),
        "{table}"
    );

    // The same offline, from the store.
    let file = env.policy_dir().join("web-baseline.yaml");
    let (code, lines) = diff(&env, &file, &start);
    assert_eq!(code, Some(3));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        (s(&lines[0], "kind"), s(&lines[0], "value")),
        ("country", "US")
    );
    assert_eq!(lines[0]["attempts"], 3, "{lines:#?}");

    // The signed bundle: the alert in its summary, the chain intact.
    let bundle = export_window(&env, &start, &now(), "drift.tar");
    let md = bundle_file(&bundle, "summary.md");
    eprintln!("{md}");
    let rows = monitor::evidence::summary::table_rows(&md, monitor::evidence::summary::DRIFT);
    assert_eq!(rows.len(), 1, "{md}");
    let cells = monitor::evidence::summary::cells(rows[0]);
    assert_eq!(
        cells[1..7],
        [
            sel.clone(),
            "country US".into(),
            format!("{US_V4}:{PORT}/tcp"),
            "would\\_deny".into(),
            "eu-only".into(),
            cells[6].clone()
        ],
        "{md}"
    );
    assert!(cells[6].starts_with("web-baseline ("), "{md}");
    assert_eq!(cells[7], "DE", "{md}");
    let key = env.status()["node_public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let verify = Command::new(daemon_bin())
        .arg("verify")
        .arg(&bundle)
        .args(["--pubkey", &key])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));

    // A restart remembers the alert: a new decision to the US raises none.
    env.stop_daemon();
    env.start_daemon(&["--metrics-addr", &addr]);
    env.wait_log("drift: 1 alerts of earlier runs remembered", WAIT);
    let p = env.probe("sel", &["tcp", US_V6, &PORT.to_string()]);
    assert!(p.ok, "{:?}", p.raw);
    env.wait_flow_count("the connect after the restart", 1, WAIT, |f| {
        s(f, "dst_ip") == US_V6
    });
    let alerts = stored_alerts(&env, &start);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(env.status()["counters"]["drift_alerts"], 0);
}

/// A policy naming a baseline that is missing or broken is rejected like
/// any policy file that does not compile, with the baseline's place.
#[test]
fn a_policy_with_a_broken_baseline_is_rejected() {
    let env = TestEnv::started("monitor", "DE", &[]);
    std::fs::write(
        env.policy_dir().join("b.yaml"),
        "apiVersion: egress-monitor.io/v1\nkind: EgressBaseline\nmetadata: {name: b}\nspec:\n  workloads:\n    - cgroup: /x\n      countries: [DE, UK]\n",
    )
    .unwrap();
    env.write_policy(
        "q.yaml",
        &env.policy("other", "monitor", "other", "  baseline: b.yaml\n"),
    );
    let st = env.wait_status("the file rejected", WAIT, |st| {
        st["rejected_files"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let r = &st["rejected_files"][0];
    assert!(s(r, "file").ends_with("q.yaml"), "{st:#}");
    assert!(
        s(r, "error").contains("b.yaml:7: \"UK\" is not an ISO 3166-1 alpha-2 country code"),
        "{st:#}"
    );
    let check = Command::new(daemon_bin())
        .args(["policy", "check", "--geoip"])
        .arg(env.geoip())
        .arg(env.policy_dir())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check.stderr).contains("b.yaml:7: \"UK\" is not an ISO 3166-1 alpha-2 country code"),
        "{}",
        text(&check.stderr)
    );
}
