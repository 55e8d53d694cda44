//! Fleet: daemons publish their stores to a real three-server NATS
//! JetStream cluster (Debian's nats-server on loopback), and `fleet` reads
//! every node back.
use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{nats::NatsCluster, *};
use serde_json::Value;

const EPERM: i64 = 1;
/// Bounded waits for the stream to catch up (an outage's backoff is at
/// most 30 s, a cluster elects its leaders in a few).
const CATCH_UP: Duration = Duration::from_secs(120);

/// The daemon's flags for publishing as `node`.
fn publishing(cluster: &NatsCluster, node: &str) -> Vec<String> {
    vec![
        "--nats-url".into(),
        cluster.url(),
        "--node".into(),
        node.into(),
    ]
}

fn start(node: &str, cluster: &NatsCluster, extra: &[&str]) -> TestEnv {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    let mut args = publishing(cluster, node);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.start_daemon(&args);
    env
}

/// `count` allowed UDP sends from `sel`, each to a port of its own from
/// `first_port` up: a first decision, so an event, each.
fn allowed_events(env: &TestEnv, first_port: u16, count: u16) {
    let p = env.probe(
        "sel",
        &[
            "udp-burst",
            DE_V4,
            &first_port.to_string(),
            &count.to_string(),
            &count.to_string(),
        ],
    );
    assert!(p.ok, "the allowed burst failed: {:?}", p.raw);
}

/// A denied TCP connect from `sel`: refused by the kernel now.
fn denied_connect(env: &TestEnv, during: &str) {
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == EPERM,
        "{during}: the connect to {US_V4} should be refused with EPERM: {:?}",
        p.raw
    );
}

/// Waits until the store holds at least `stored` events and the stream
/// has acknowledged all of them (backlog 0 at the store's head); returns
/// the status.
fn wait_published(env: &TestEnv, stored: i64, what: &str) -> Value {
    env.wait_status(what, CATCH_UP, |s| {
        let n = &s["nats"];
        s["store"]["chain_seq"].as_i64().unwrap_or(0) >= stored
            && n["state"] == "publishing"
            && n["backlog_events"].as_u64() == Some(0)
            && n["acked_seq"].as_u64().is_some()
            && n["acked_seq"].as_i64() == s["store"]["chain_seq"].as_i64()
    })
}

/// Every store position (`seq`) of the node's own history.
fn stored_seqs(env: &TestEnv) -> Vec<u64> {
    let lines =
        json_lines(&env.cli(&["events", "--since", "0", "-o", "json", "--limit", "100000"]));
    let mut seqs: Vec<u64> = lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    seqs
}

/// Every message on `subject` in the stream, raw (no window: from the
/// stream's start), decoded as `M`, read with the library `fleet` uses.
fn stream_messages<M>(
    cluster: &NatsCluster,
    subject: String,
    decode: impl Fn(Option<&str>, &[u8]) -> Result<M, String>,
) -> Vec<M> {
    let nats = monitor::fleet::NatsArgs {
        nats_url: Some(cluster.url()),
        nats_creds: None,
        nats_tls_ca: None,
        nats_tls_cert: None,
        nats_tls_key: None,
        nats_subject_prefix: "egress".into(),
        nats_stream: "EGRESS".into(),
    };
    let mut out = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(monitor::fleet::read::read(
            &nats,
            subject,
            0,
            &mut |payload, content_type| {
                out.push(decode(content_type, payload).map_err(anyhow::Error::msg)?);
                Ok(())
            },
        ))
        .expect("read the stream");
    out
}

/// Every event message of `node` in the stream.
fn stream_events(cluster: &NatsCluster, node: &str) -> Vec<monitor::api::pb::Event> {
    stream_messages(cluster, format!("egress.{node}.event.>"), |ct, p| {
        monitor::fleet::decode(ct, p)
    })
}

/// The stream holds each of the node's stored events once: the same
/// positions, none twice, each with its node and subject's verdict.
fn assert_exactly_once(cluster: &NatsCluster, env: &TestEnv, node: &str) -> usize {
    let stored = stored_seqs(env);
    assert!(!stored.is_empty(), "{node}: the store holds no event");
    let messages = stream_events(cluster, node);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for m in &messages {
        assert_eq!(m.node, node, "{m:?}");
        *seen.entry(m.seq).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{node}: events in the stream more than once (seq, times): {twice:?}"
    );
    let in_stream: Vec<u64> = seen.keys().copied().collect();
    assert_eq!(
        in_stream,
        stored,
        "{node}: the stream's events ({} messages) are not the store's ({} events)",
        messages.len(),
        stored.len()
    );
    messages.len()
}

/// `fleet ARGS --nats-url CLUSTER`; it must succeed.
fn fleet(cluster: &NatsCluster, args: &[&str]) -> std::process::Output {
    let out = Command::new(daemon_bin())
        .arg("fleet")
        .args(args)
        .args(["--nats-url", &cluster.url()])
        .output()
        .expect("run fleet");
    assert!(
        out.status.success(),
        "fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two daemons publish to the cluster: each event arrives exactly once
/// (positions and count against each store), the backlog drains to 0 in
/// status and metrics, and `fleet events` answers for both nodes with the
/// filters applied (server side by node and verdict, client side the
/// rest), in table and JSON.
#[test]
fn two_nodes_publish_every_event_once_and_fleet_reads_both() {
    let cluster = NatsCluster::start();
    let alpha = start("alpha", &cluster, &["--metrics-addr", "127.0.0.1:19488"]);
    let beta = start("beta", &cluster, &[]);
    for env in [&alpha, &beta] {
        allowed_events(env, 20000, 40);
        denied_connect(env, "publishing");
    }
    for (env, node) in [(&alpha, "alpha"), (&beta, "beta")] {
        wait_published(env, 41, &format!("{node}: everything acknowledged"));
        let n = assert_exactly_once(&cluster, env, node);
        assert!(n >= 41, "{node}: {n} events in the stream, 41 made");
    }
    let metrics = nats::http_get(19488, "/metrics");
    assert!(
        metrics.contains("egress_monitor_nats_backlog_events 0"),
        "{metrics}"
    );
    let published = metrics
        .lines()
        .find_map(|l| l.strip_prefix("egress_monitor_nats_published_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no egress_monitor_nats_published_total in {metrics}"));
    assert!(published >= 41.0, "{published}");

    // Denials of both nodes, and only they.
    let out = fleet(
        &cluster,
        &[
            "events",
            "--since",
            "10m",
            "--verdict",
            "denied",
            "-o",
            "json",
        ],
    );
    let denied = json_lines(&out);
    let nodes: Vec<&str> = denied.iter().map(|e| s(e, "node")).collect();
    assert_eq!(nodes.len(), 2, "{denied:#?}");
    assert!(
        nodes.contains(&"alpha") && nodes.contains(&"beta"),
        "{nodes:?}"
    );
    for e in &denied {
        assert_eq!(s(e, "verdict"), "denied", "{e}");
        assert_eq!(s(e, "dst_ip"), US_V4, "{e}");
        assert_eq!(s(e, "policy"), "eu-only", "{e}");
    }
    // One node, a filter only the client can apply (a port), several
    // verdicts (a wildcard subject).
    let out = fleet(
        &cluster,
        &[
            "events",
            "--since",
            "10m",
            "--node",
            "beta",
            "--port",
            "20007",
            "--verdict",
            "allowed",
            "--verdict",
            "denied",
            "-o",
            "json",
        ],
    );
    let one = json_lines(&out);
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(s(&one[0], "node"), "beta");
    assert_eq!(one[0]["dst_port"], 20007);
    // The table: a NODE column first.
    let out = fleet(
        &cluster,
        &["events", "--since", "10m", "--verdict", "denied"],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("fleet events --verdict denied:\n{table}");
    let status = alpha.cli_ok(&["status"]);
    let nats_line = status
        .lines()
        .find(|l| l.starts_with("nats "))
        .unwrap_or("");
    assert!(nats_line.contains("publishing"), "{status}");
    assert!(nats_line.contains("backlog 0 events"), "{status}");
    eprintln!("{nats_line}");
    let mut lines = table.lines();
    assert!(lines.next().unwrap_or("").starts_with("NODE "), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter().any(|r| r.starts_with("alpha ")) && rows.iter().any(|r| r.starts_with("beta ")),
        "{table}"
    );
}

/// A flow minute reaches the stream once it is closed, and `fleet flows`
/// prints both nodes' rows with their node, in JSON and CSV.
#[test]
fn closed_flow_minutes_reach_the_stream_per_node() {
    let cluster = NatsCluster::start();
    let alpha = start("alpha", &cluster, &[]);
    let beta = start("beta", &cluster, &[]);
    // Alpha's minute has more flows than the JetStream context has permits
    // for acknowledgements not yet awaited (5,000): published whole, it
    // stopped the publisher without an error.
    allowed_events(&alpha, 21000, ALPHA_FLOWS);
    allowed_events(&beta, 21000, 3);
    for env in [&alpha, &beta] {
        denied_connect(env, "flows");
    }
    // A minute is published 5 s after it ends, once a harvest after its
    // end is stored: at most about 66 s from now.
    let deadline = Instant::now() + CATCH_UP;
    let rows = loop {
        let out = fleet(
            &cluster,
            &[
                "flows",
                "--since",
                "10m",
                "--to-cidr",
                "203.0.113.0/24",
                "-o",
                "json",
            ],
        );
        let rows = json_lines(&out);
        if rows.len() >= 2 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "no flow rows of both nodes within {CATCH_UP:?}: {rows:#?}\nalpha's log:\n{}",
            alpha.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let mut nodes: Vec<&str> = rows.iter().map(|f| s(f, "node")).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["alpha", "beta"], "{rows:#?}");
    for f in &rows {
        assert_eq!(s(f, "dst_ip"), US_V4, "{f}");
        assert_eq!(s(f, "verdict"), "denied", "{f}");
        assert!(f["count"].as_u64().unwrap_or(0) >= 1, "{f}");
    }
    // Alpha's flows to `cidr` in the stream, in `format`.
    let alpha_flows = |cidr: &str, format: &str| {
        fleet(
            &cluster,
            &[
                "flows",
                "--since",
                "10m",
                "--node",
                "alpha",
                "--to-cidr",
                cidr,
                "--limit",
                "100000",
                "-o",
                format,
            ],
        )
    };
    let out = alpha_flows("203.0.113.0/24", "csv");
    let csv = String::from_utf8_lossy(&out.stdout);
    let table = fleet(&cluster, &["flows", "--since", "10m"]);
    eprintln!(
        "fleet flows:\n{}\nfleet flows -o csv:\n{csv}",
        String::from_utf8_lossy(&table.stdout)
    );
    let mut lines = csv.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("node,first_seen,"),
        "{csv}"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 1, "{csv}");
    assert!(body[0].starts_with("alpha,"), "{csv}");
    // Every one of alpha's allowed flows is in the stream, once.
    let out = alpha_flows(&format!("{DE_V4}/32"), "json");
    let allowed = json_lines(&out);
    let ports: std::collections::BTreeSet<u64> = allowed
        .iter()
        .filter_map(|f| f["dst_port"].as_u64())
        .collect();
    assert_eq!(
        (allowed.len(), ports.len()),
        (usize::from(ALPHA_FLOWS), usize::from(ALPHA_FLOWS)),
        "alpha's allowed flows in the stream"
    );
}

/// Alpha's allowed flows in one minute (see
/// `closed_flow_minutes_reach_the_stream_per_node`).
const ALPHA_FLOWS: u16 = 6000;

/// One server killed and started again while events are published, then
/// the whole cluster down (and the daemon restarted meanwhile): denied
/// connects are refused all along, the backlog shows in status, and
/// afterwards every stored event is in the stream exactly once.
#[test]
fn outages_and_a_restart_lose_nothing_and_repeat_nothing() {
    let mut cluster = NatsCluster::start();
    let mut env = start("gamma", &cluster, &[]);
    allowed_events(&env, 22000, 100);
    // Each server in turn, so the one the daemon is connected to is one.
    for i in 0..nats::SERVERS {
        cluster.kill(i);
        allowed_events(&env, 22100 + 50 * i as u16, 50);
        denied_connect(&env, &format!("server {i} down"));
        cluster.restart(i);
    }
    wait_published(&env, 251, "caught up after each server's restart");

    cluster.kill_all();
    denied_connect(&env, "the whole cluster down");
    allowed_events(&env, 22300, 100);
    env.wait_status("a backlog, said, while NATS is down", CATCH_UP, |s| {
        s["nats"]["backlog_events"].as_u64().unwrap_or(0) >= 100
            && s["nats"]["state"] != "publishing"
    });
    // The daemon restarts while NATS is away: the cursor is in its store.
    env.stop_daemon();
    let args = publishing(&cluster, "gamma");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.start_daemon(&args);
    denied_connect(&env, "restarted with NATS down");
    allowed_events(&env, 22400, 50);
    cluster.start_all();
    wait_published(&env, 401, "caught up after the cluster came back");
    let n = assert_exactly_once(&cluster, &env, "gamma");
    assert!(
        n >= 401,
        "{n} events in the stream: 400 allowed and at least one denied were made"
    );
}

/// A wrong password, a user without the JetStream API, and a credentials
/// file that is not there: each said clearly, in status and the log (or at
/// the start), and the node goes on enforcing.
#[test]
fn bad_credentials_and_missing_permission_are_said_clearly() {
    let cluster = NatsCluster::start();
    let wrong = cluster.url_as((nats::USER.0, "wrong-password"));
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    env.start_daemon(&["--nats-url", &wrong, "--node", "delta"]);
    let st = env.wait_status("the authorization failure", CATCH_UP, |s| {
        s["nats"]["state"] == "error"
    });
    let error = st["nats"]["error"].as_str().unwrap_or("").to_lowercase();
    assert!(error.contains("authorization violation"), "{st:#}");
    assert!(error.contains("connecting to nats at"), "{st:#}");
    env.wait_log(
        "NATS publishing: connecting to NATS at",
        Duration::from_secs(10),
    );
    denied_connect(&env, "NATS refusing us");
    env.stop_daemon();

    let fenced = cluster.url_as(nats::FENCED);
    env.start_daemon(&["--nats-url", &fenced, "--node", "delta"]);
    let st = env.wait_status("the missing permission", CATCH_UP, |s| {
        s["nats"]["state"] == "error"
    });
    let error = st["nats"]["error"].as_str().unwrap_or("");
    assert!(error.contains("looking up NATS stream EGRESS"), "{st:#}");
    assert!(error.contains("Permissions Violation"), "{st:#}");
    env.stop_daemon();

    // Files that are not there: refused at the start, naming the flag.
    let missing = env.dir.path().join("missing.creds");
    let out = Command::new(daemon_bin())
        .args(["daemon", "--nats-url", &cluster.url(), "--nats-creds"])
        .arg(&missing)
        .output()
        .expect("run the daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--nats-creds {}: No such file", missing.display())),
        "{err}"
    );
    // A node name a subject cannot carry.
    let out = Command::new(daemon_bin())
        .args(["daemon", "--nats-url", &cluster.url(), "--node", "a>b"])
        .output()
        .expect("run the daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node name \"a>b\" holds '>'"), "{err}");
    // fleet without a URL.
    let out = Command::new(daemon_bin())
        .args(["fleet", "events"])
        .env_remove("EGRESS_MONITOR_NATS_URL")
        .output()
        .expect("run fleet");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--nats-url is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the stream holds a checkpoint of `node` that signs its
/// record `seq` or a later one (a daemon signs every 10 s and publishes a
/// checkpoint once the records it names are in the stream).
fn wait_signed(cluster: &NatsCluster, node: &str, seq: i64) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let signed = stream_messages(cluster, format!("egress.{node}.checkpoint"), |_, p| {
            serde_json::from_slice::<monitor::fleet::NodeCheckpoint>(p).map_err(|e| e.to_string())
        });
        if signed
            .iter()
            .any(|c| c.checkpoint.seq >= seq && c.node == node)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: no checkpoint of seq {seq} or later in the stream within {CATCH_UP:?}: {signed:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `verify BUNDLE --pubkey K...`: its exit status, stdout and stderr.
fn verify(bundle: &std::path::Path, keys: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("verify").arg(bundle);
    for k in keys {
        cmd.args(["--pubkey", k]);
    }
    let out = cmd.output().expect("run verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both nodes publish, then stop (their evidence must outlive them):
/// `fleet export` writes one bundle from the stream alone, and `verify`
/// re-links each node's chain and checks it against the checkpoints that
/// node's key signed. Both keys pinned: exit 0, every record signed; one
/// key: exit 3 naming the other node; a --node and a --verdict export
/// holds what they ask; a node the stream does not know is an error.
#[test]
fn fleet_export_is_verifiable_per_node_after_the_nodes_are_gone() {
    let cluster = NatsCluster::start();
    let mut alpha = start("alpha", &cluster, &[]);
    let mut beta = start("beta", &cluster, &[]);
    let mut keys = Vec::new();
    for (env, node) in [(&alpha, "alpha"), (&beta, "beta")] {
        allowed_events(env, 21000, 20);
        denied_connect(env, "fleet export");
        let st = wait_published(env, 21, &format!("{node}: everything acknowledged"));
        wait_signed(&cluster, node, st["store"]["chain_seq"].as_i64().unwrap());
        keys.push(st["node_public_key"].as_str().unwrap().to_string());
    }
    alpha.stop_daemon();
    beta.stop_daemon();

    let out = alpha.dir.path().join("fleet.tar");
    let path = out.to_str().unwrap();
    let made = fleet(&cluster, &["export", "--since", "10m", "--out", path]);
    let said = String::from_utf8_lossy(&made.stdout);
    eprintln!("fleet export:\n{said}");
    assert!(said.contains("of 2 nodes"), "{said}");
    for node in ["alpha", "beta"] {
        let line = said
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{node}:")))
            .unwrap_or_else(|| panic!("no line for {node}: {said}"));
        assert!(!line.contains("not signed"), "{said}");
    }

    let both: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = verify(&out, &both);
    eprintln!("verify:\n{stdout}{stderr}");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("OK "), "{stdout}");
    for node in ["alpha", "beta"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{node}:")))
            .unwrap_or_else(|| panic!("no line for {node}: {stdout}"));
        assert!(line.contains("all signed"), "{stdout}");
        assert!(line.contains("(matches a --pubkey)"), "{stdout}");
    }
    // The records are the stores': 21 or more each, the denial among them.
    for node in ["alpha", "beta"] {
        let jsonl = bundle_file(&out, &format!("nodes/{node}/events.jsonl"));
        let records: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(records.len() >= 21, "{node}: {} records", records.len());
        assert!(
            records
                .iter()
                .any(|r| s(r, "verdict") == "denied" && s(r, "dst_ip") == US_V4),
            "{node}: no denial in {jsonl}"
        );
    }
    let md = bundle_file(&out, "summary.md");
    assert!(md.contains("| denied | eu-only |"), "{md}");

    // One key pinned: intact, but beta's origin is not shown.
    let (code, stdout, stderr) = verify(&out, &both[..1]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stdout.contains("NOT pinned"), "{stdout}");
    assert!(stderr.contains("NOT VERIFIED"), "{stderr}");

    // One node, denials only: beta's one denial, its chain all there.
    let one = alpha.dir.path().join("beta-denied.tar");
    fleet(
        &cluster,
        &[
            "export",
            "--since",
            "10m",
            "--node",
            "beta",
            "--verdict",
            "denied",
            "--out",
            one.to_str().unwrap(),
        ],
    );
    let (code, stdout, _) = verify(&one, &both[1..]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("beta: 1 of "), "{stdout}");
    assert!(!stdout.contains("alpha"), "{stdout}");

    // A node the stream does not hold.
    let err = Command::new(daemon_bin())
        .args([
            "fleet", "export", "--since", "10m", "--node", "omega", "--out",
        ])
        .arg(alpha.dir.path().join("none.tar"))
        .args(["--nats-url", &cluster.url()])
        .output()
        .expect("run fleet export");
    assert!(!err.status.success());
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(text.contains("holds nothing of node omega"), "{text}");
    assert!(!alpha.dir.path().join("none.tar").exists());
}
