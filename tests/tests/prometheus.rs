//! Prometheus for real: the alert rules in deploy/prometheus pass `promtool
//! check rules` and their unit tests; a real Prometheus server (Debian's)
//! scrapes a real daemon, returns the counts of known traffic through its
//! HTTP API and fires the denial alert; the Grafana dashboard and the rules
//! name only metrics a real daemon exports.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::*;
use serde_json::{json, Value};

/// Ports of this suite (the range the project gives these tests).
const DAEMON_METRICS_PORT: u16 = 19490;
const PROMETHEUS_PORT: u16 = 19491;
const CATALOGUE_METRICS_PORT: u16 = 19492;

const WAIT: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// `promtool ARGS` in `dir`: (success, everything it printed).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let (out, text) = command_output(Command::new("promtool").args(args).current_dir(dir));
    (out.status.success(), text)
}

/// Copies the rules and their tests into a scratch directory, with `edit`
/// applied to the rules.
fn edited_rules(edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["alerts.yaml", "alerts_test.yaml"] {
        let text = std::fs::read_to_string(deploy("prometheus").join(name)).unwrap();
        let text = if name == "alerts.yaml" {
            let edited = edit(&text);
            assert_ne!(edited, text, "the edit changed nothing");
            edited
        } else {
            text
        };
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// The alerting rules of alerts.yaml: (name, rule).
fn alert_rules() -> Vec<(String, Value)> {
    let doc = load_yaml(&deploy("prometheus/alerts.yaml"));
    doc[0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r)))
        .collect()
}

/// The rules check, and their unit tests pass; every alert carries a
/// severity and on-call text whose commands the CLI accepts, and the unit
/// tests show each one firing and not firing.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = deploy("prometheus");
    let (ok, text) = promtool(&dir, &["check", "rules", "alerts.yaml"]);
    assert!(ok, "promtool check rules alerts.yaml:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    let alerts = alert_rules();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or("");
            assert!(text.len() > 20, "{name}: no useful {key}: {text:?}");
        }
    }

    // The commands the on-call text gives exist with these flags: clap
    // checks every flag and value before it reaches --help.
    let mut commands = 0;
    for (name, rule) in &alerts {
        let text = rule["annotations"]["description"].as_str().unwrap();
        for quoted in text.split('`').skip(1).step_by(2) {
            let Some(args) = quoted.strip_prefix("egress-monitor ") else {
                continue;
            };
            let args = args.replace("{{ $labels.policy }}", "eu");
            let argv: Vec<&str> = args.split_whitespace().collect();
            let (out, text) = command_output(Command::new(daemon_bin()).args(&argv).arg("--help"));
            assert!(out.status.success(), "{name}: `{quoted}` fails:\n{text}");
            commands += 1;
        }
    }
    assert!(
        commands >= 5,
        "only {commands} commands in the on-call text"
    );

    let (ok, text) = promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "promtool test rules alerts_test.yaml:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    // What the unit tests expect of each alert: firing (a non-empty
    // exp_alerts) and not firing (an empty one), at some time.
    let tests = load_yaml(&dir.join("alerts_test.yaml"));
    let cases: Vec<(String, bool)> = tests[0]["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let firing = c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            (c["alertname"].as_str().unwrap().to_string(), firing)
        })
        .collect();
    for (name, _) in &alerts {
        for firing in [true, false] {
            assert!(
                cases.contains(&(name.clone(), firing)),
                "alerts_test.yaml never shows {name} {}",
                if firing { "firing" } else { "not firing" }
            );
        }
    }
}

/// The checks above can fail: a broken expression fails `check rules`
/// naming the file and the error, and a denial rule on `increase()` alone
/// (which never sees the first denials towards a new country: their series
/// is born with its count) fails the unit tests naming the alert.
#[test]
fn promtool_names_a_broken_rule_and_a_rule_that_misses_first_denials() {
    let broken = edited_rules(|t| t.replacen("up{job=\"egress-monitor\"} == 0", "up{job=", 1));
    let (ok, text) = promtool(broken.path(), &["check", "rules", "alerts.yaml"]);
    assert!(!ok, "a broken expression passed:\n{text}");
    assert!(
        text.contains("alerts.yaml") && text.contains("parse error"),
        "{text}"
    );

    let increase_only = edited_rules(|t| {
        let (head, rest) = t
            .split_once("- record: egress_monitor:decisions:increase5m")
            .unwrap();
        let (_, tail) = rest
            .split_once("- record: egress_monitor:policy_reloads_failed")
            .unwrap();
        format!(
            "{head}- record: egress_monitor:decisions:increase5m\n        \
             expr: increase(egress_monitor_decisions_total[5m]) > 0\n      \
             - record: egress_monitor:policy_reloads_failed{tail}"
        )
    });
    let (ok, text) = promtool(increase_only.path(), &["check", "rules", "alerts.yaml"]);
    assert!(ok, "the edited rules should still be valid:\n{text}");
    let (ok, text) = promtool(increase_only.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(!ok, "increase() alone passed the unit tests:\n{text}");
    assert!(text.contains("alertname: EgressDenied, time: 6m"), "{text}");
}

/// A Prometheus server in a scratch directory, killed (by its pid) and
/// removed on drop, also when the test fails.
struct PrometheusServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrometheusServer {
    /// Scrapes 127.0.0.1:`target` as job egress-monitor every second and
    /// evaluates alerts.yaml every second.
    fn start(port: u16, target: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // JSON is YAML: the configuration needs no YAML writer.
        let config = json!({
            "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
            "rule_files": [deploy("prometheus/alerts.yaml")],
            "scrape_configs": [{
                "job_name": "egress-monitor",
                "static_configs": [{ "targets": [format!("127.0.0.1:{target}")] }],
            }],
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting prometheus: {e} (installed by `cargo xtask setup`)")
            });
        let mut server = Self { child, dir, port };
        server.wait("the server ready", |s| {
            loopback::try_get(s.port, "/-/ready").is_ok_and(|r| r.ok())
        });
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Polls until `check` holds (bounded), failing early if the server
    /// exited.
    fn wait(&mut self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if check(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never showed {what} within {WAIT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `data` of an API call that must succeed.
    fn api(&self, path: &str) -> Value {
        let r = loopback::get(self.port, path);
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {} {}", r.status, r.body));
        assert_eq!(v["status"], "success", "{path}: {} {v}", r.status);
        v["data"].clone()
    }

    /// The API path of an instant query.
    fn query_path(promql: &str) -> String {
        let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        format!("/api/v1/query?query={q}")
    }

    /// The instant vector of `promql`: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api(&Self::query_path(promql));
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (s["metric"].clone(), v.expect("a sample value"))
            })
            .collect()
    }

    /// The alerts pending or firing now.
    fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The rules as the server loaded them, with health and state.
    fn rules(&self) -> Vec<Value> {
        self.api("/api/v1/rules")["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alert<'a>(alerts: &'a [Value], name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    alerts.iter().find(|a| {
        a["labels"]["alertname"] == name && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
    })
}

/// A real Prometheus scrapes a real daemon: through its HTTP API the
/// decision counters equal the traffic made (3 denied US connections, 2
/// allowed DE datagrams), every rule evaluates without error, the denial
/// alert is inactive before the denials and fires after them, and the
/// down alert goes pending once the daemon stops.
#[test]
fn a_real_prometheus_scrapes_known_counts_and_fires_the_denial_alert() {
    let mut env = TestEnv::new();
    env.write_policy(
        "eu.yaml",
        &env.policy("eu", "enforce", "sel", "  allow:\n    countries: [DE]\n"),
    );
    env.start_daemon(&[
        "--metrics-addr",
        &format!("127.0.0.1:{DAEMON_METRICS_PORT}"),
    ]);
    let mut prom = PrometheusServer::start(PROMETHEUS_PORT, DAEMON_METRICS_PORT);
    let up = "up{job=\"egress-monitor\"}";
    prom.wait("the daemon scraped", |p| {
        p.query(up).first().is_some_and(|(_, v)| *v == 1.0)
    });

    // An evaluation after the first scrape: every rule healthy, nothing
    // pending or firing.
    let last_evaluation = |p: &PrometheusServer| {
        p.rules()
            .iter()
            .find(|r| r["name"] == "EgressDenied")
            .map(|r| r["lastEvaluation"].to_string())
            .expect("EgressDenied loaded")
    };
    let before = last_evaluation(&prom);
    prom.wait("a rule evaluation after the scrape", |p| {
        last_evaluation(p) != before
    });
    for rule in prom.rules() {
        assert_eq!(rule["health"], "ok", "{rule}\n{}", prom.log());
    }
    let alerts = prom.alerts();
    assert!(alerts.is_empty(), "alerts before any traffic: {alerts:#?}");

    let pids = env.denied_then_allowed("sel", 3, 2);
    // The first attempt to each destination is an event; the repeats reach
    // the counters with the kernel flow table's next harvest.
    for pid in [pids[0], pids[3]] {
        env.expect_event("probe decision", WAIT, |e: &Value| {
            e["tgid"].as_u64() == Some(pid)
        });
    }

    let decisions = |p: &PrometheusServer| {
        let mut seen: Vec<(String, String, String, f64)> = p
            .query("egress_monitor_decisions_total{job=\"egress-monitor\"}")
            .into_iter()
            .map(|(m, v)| {
                let l = |k: &str| m[k].as_str().unwrap_or("").to_string();
                (l("verdict"), l("policy"), l("country"), v)
            })
            .collect();
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen
    };
    let expected = vec![
        (
            "allowed".to_string(),
            "eu".to_string(),
            "DE".to_string(),
            2.0,
        ),
        (
            "denied".to_string(),
            "eu".to_string(),
            "US".to_string(),
            3.0,
        ),
    ];
    prom.wait("the known counts", |p| decisions(p) == expected);
    assert_eq!(decisions(&prom), expected);
    // What an operator's query returns (shown with --nocapture).
    let promql = "egress_monitor_decisions_total";
    eprintln!(
        "GET {}\n{:#}",
        PrometheusServer::query_path(promql),
        prom.api(&PrometheusServer::query_path(promql))
    );

    prom.wait("EgressDenied firing", |p| {
        alert(
            &p.alerts(),
            "EgressDenied",
            &[("policy", "eu"), ("country", "US")],
        )
        .is_some_and(|a| a["state"] == "firing")
    });
    let alerts = prom.alerts();
    eprintln!("GET /api/v1/alerts\n{:#}", Value::Array(alerts.clone()));
    let firing = alert(&alerts, "EgressDenied", &[]).unwrap();
    assert_eq!(firing["labels"]["severity"], "critical", "{firing}");
    assert_eq!(firing["labels"]["verdict"], "denied", "{firing}");
    assert_eq!(
        firing["annotations"]["summary"],
        format!("127.0.0.1:{DAEMON_METRICS_PORT}: policy eu refused connections to US"),
        "{firing}"
    );
    // Allowed traffic alerts nothing; no monitor policy, no would-deny.
    let names: BTreeSet<&str> = alerts
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["EgressDenied"]), "{alerts:#?}");

    // Every dashboard query parses and evaluates in the real server.
    let (_, board) = dashboard();
    for (title, exprs) in dashboard_queries(&board) {
        for e in exprs {
            let promql = without_grafana_variables(&e);
            assert!(
                !promql.contains('$'),
                "{title}: a variable left in {promql}"
            );
            let r = loopback::get(prom.port, &PrometheusServer::query_path(&promql));
            assert!(r.ok(), "panel {title:?}: {promql}: {} {}", r.status, r.body);
        }
    }

    // The daemon gone: the scrape fails and the down alert waits out its
    // `for:` as pending.
    env.stop_daemon();
    prom.wait("EgressMonitorDown pending", |p| {
        alert(&p.alerts(), "EgressMonitorDown", &[]).is_some_and(|a| a["state"] == "pending")
    });
    assert_eq!(
        prom.query(up),
        vec![(
            json!({"__name__": "up", "job": "egress-monitor", "instance": format!("127.0.0.1:{DAEMON_METRICS_PORT}")}),
            0.0
        )]
    );
}

/// The dashboard's panels that query (all but rows and the alert list):
/// (title, expressions), each panel with a title and a non-empty expression
/// per target.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .filter(|p| p["type"] != "row" && p["type"] != "alertlist")
        .map(|panel| {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            assert!(!title.is_empty(), "a panel without a title: {panel}");
            let exprs: Vec<String> = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?} has no targets"))
                .iter()
                .map(|t| t["expr"].as_str().unwrap_or("").to_string())
                .collect();
            assert!(
                !exprs.is_empty() && exprs.iter().all(|e| !e.trim().is_empty()),
                "panel {title:?} has an empty query: {exprs:?}"
            );
            (title, exprs)
        })
        .collect()
}

fn dashboard() -> (String, Value) {
    let file = deploy("grafana/egress-monitor.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
    (text, v)
}

/// A dashboard expression as Prometheus takes it: Grafana's variables
/// replaced by values.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
}

/// Metric names in `text`: `egress_monitor_...` words, and recording rule
/// names (`egress_monitor:...`).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("egress_monitor_") || w.starts_with("egress_monitor:"))
        .map(|w| w.trim_end_matches(':').to_string())
        .collect()
}

/// Sample names the exposition declares: `# TYPE x counter` is `x_total`,
/// `# TYPE x info` is `x_info`, other types their name (families without
/// a sample yet included).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (w.next()?, w.next()?);
            Some(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The dashboard is valid JSON with panels that query something, and every
/// metric the dashboard and the rules name is exported by a real daemon
/// (or defined by a recording rule, or on the clearly named not-yet list).
#[test]
fn dashboard_and_rules_name_only_metrics_the_daemon_exports() {
    let (dashboard_text, dashboard) = dashboard();
    assert!(dashboard["title"].is_string(), "a dashboard has a title");
    let queried = dashboard_queries(&dashboard)
        .iter()
        .filter(|(_, exprs)| exprs.iter().any(|e| !metric_names(e).is_empty()))
        .count();
    assert!(
        queried >= 8,
        "only {queried} panels query egress-monitor metrics"
    );

    let rules_text = std::fs::read_to_string(deploy("prometheus/alerts.yaml")).unwrap();
    let recorded: BTreeSet<String> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_string)
        .collect();

    let mut env = TestEnv::new();
    env.write_policy(
        "eu.yaml",
        &env.policy("eu", "enforce", "sel", "  allow:\n    countries: [DE]\n"),
    );
    // A policy with rules no loaded data can judge (the test daemon has no
    // cloud ranges), so egress_monitor_policy_data_missing has a series,
    // and with a baseline, so egress_monitor_drift_alerts_total has its
    // series (at 0) from the start.
    std::fs::create_dir_all(env.cgroup("mon")).unwrap();
    std::fs::write(
        env.policy_dir().join("mon-baseline.yaml"),
        format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressBaseline\nmetadata: {{name: mon}}\nspec:\n  workloads:\n    - cgroup: {}\n      countries: [DE]\n",
            env.rel("mon")
        ),
    )
    .unwrap();
    env.write_policy(
        "cloud.yaml",
        &env.policy(
            "cloud",
            "monitor",
            "mon",
            "  allow:\n    cloudRegions: [\"aws:eu-west-3\"]\n  baseline: mon-baseline.yaml\n",
        ),
    );
    env.start_daemon(&[
        "--metrics-addr",
        &format!("127.0.0.1:{CATALOGUE_METRICS_PORT}"),
    ]);
    // One denial, so every family has its sample (not only its TYPE line).
    let pid = env.denied_then_allowed("sel", 1, 0)[0];
    env.expect_event("the denial", WAIT, |e: &Value| {
        e["tgid"].as_u64() == Some(pid)
    });
    let exposition = loopback::get(CATALOGUE_METRICS_PORT, "/metrics").body;
    // The store's lines as a scrape shows them (with --nocapture).
    for line in exposition
        .lines()
        .filter(|l| l.contains("egress_monitor_store_"))
    {
        eprintln!("{line}");
    }
    let exported = exported_names(&exposition);
    assert!(
        exported.contains("egress_monitor_decisions_total")
            && exported.contains("egress_monitor_store_degraded"),
        "{exported:?}"
    );

    for (what, text) in [
        ("deploy/grafana/egress-monitor.json", &dashboard_text),
        ("deploy/prometheus/alerts.yaml", &rules_text),
    ] {
        let names = metric_names(text);
        assert!(names.len() >= 8, "{what}: {names:?}");
        for name in names {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                exported.contains(&name)
            };
            assert!(
                known,
                "{what} names {name}, which the daemon does not export (nor a \
                 recording rule define); exported: {exported:#?}"
            );
        }
    }
}
