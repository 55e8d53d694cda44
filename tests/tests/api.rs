//! The gRPC API and the CLI against the real daemon: real clients (our CLI,
//! grpcurl through reflection, a Python client generated from the proto),
//! server-side filters, slow clients, access control.
use std::{path::Path, process::Command, time::Duration};

use integration_tests::*;
use monitor::api::pb::{self, stream_events_response::Item};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

fn start(mode: &str, extra: &[&str]) -> TestEnv {
    TestEnv::started(mode, "DE", extra)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An analyst watches denied connections to one country, from the CLI, in
/// table and JSON form, with the daemon's JSON keys.
#[test]
fn cli_shows_denied_connections_to_a_country() {
    let mut env = start("enforce", &[]);
    let port = PORT.to_string();
    let denied = env.probe("sel", &["tcp", US_V4, &port]);
    let allowed = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(!denied.ok && allowed.ok);
    env.expect_event("both", WAIT, |e| e["tgid"].as_u64() == Some(allowed.pid));
    let got = json_lines(&env.cli(&[
        "events",
        "--last",
        "50",
        "-o",
        "json",
        "--verdict",
        "denied",
        "--country",
        "US",
    ]));
    assert_eq!(got.len(), 1, "{got:?}");
    let from_log = env
        .seen
        .iter()
        .find(|e| e["tgid"].as_u64() == Some(denied.pid))
        .unwrap()
        .clone();
    assert_eq!(
        got[0], from_log,
        "the CLI's JSON is the daemon's --log-events JSON"
    );

    let table = env.cli(&["events", "--last", "50", "--verdict", "denied"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let mut rows = text.lines();
    let header = rows.next().unwrap();
    for col in [
        "TIME",
        "VERDICT",
        "HOOK",
        "PROCESS",
        "CGROUP",
        "NAME",
        "DESTINATION",
        "PLACE",
        "RULE",
        "POLICY",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = rows.next().expect("one row");
    assert!(
        row.contains("denied")
            && row.contains(" connect4 ")
            && row.contains(&format!("probe[{}]", denied.pid))
            && row.contains(&format!("{US_V4}:{PORT}/tcp")),
        "{row}"
    );
    assert!(
        !row.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert!(rows.next().is_none());

    // Time as people type it: `--since 0` is the beginning of the store
    // (it read as "0 s ago" and returned nothing), a plain UTC date works,
    // and a bad one is refused with a form that works.
    for since in ["1h", "0", "2020-01-01", "2020-01-01 00:00"] {
        // The writer stores in batches: wait (bounded) for the first form.
        let mut tries = 0;
        let out = loop {
            let out = env.cli(&[
                "events",
                "--since",
                since,
                "-o",
                "json",
                "--verdict",
                "denied",
            ]);
            tries += 1;
            if tries >= 20 || !out.stdout.is_empty() {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(out.status.success(), "--since {since}: {out:?}");
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        assert!(n >= 1, "--since {since} found the stored denial: {out:?}");
    }
    let bad = env.cli(&["events", "--since", "2026-13-01"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("2026-13-01") && err.contains("1795308341"),
        "{err}"
    );

    // Live: a follower sees a new denial as it happens.
    let mut follower = Command::new(daemon_bin())
        .args([
            "events",
            "--follow",
            "-o",
            "json",
            "--verdict",
            "denied",
            "--socket",
        ])
        .arg(env.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let again = env.probe("sel", &["udp", US_V6, &port]);
    assert!(!again.ok);
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let line = rx.recv_timeout(WAIT).expect("live event");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["tgid"].as_u64(), Some(again.pid));
    assert_eq!(s(&v, "hook"), "sendmsg6");
    let _ = follower.kill();
    let _ = follower.wait();

    // Status and policies.
    let status = env.cli(&["status", "-o", "json"]);
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["counters"]["denied"].as_u64(), Some(2));
    let hooks: Vec<&str> = st["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hook"].as_str().unwrap())
        .collect();
    for hook in ["egress", "connect4", "connect6", "sendmsg4", "sendmsg6"] {
        assert!(hooks.contains(&hook), "{hook} not attached: {hooks:?}");
    }
    assert_eq!(st["policies"][0]["name"], "eu-only");
    assert_eq!(st["policies"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(st["geoip"]["sha256"].as_str().unwrap().len(), 64);
    let list = env.cli(&["policy", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("eu-only") && text.contains(&env.rel("sel")),
        "{text}"
    );
}

/// A malformed request is INVALID_ARGUMENT naming the field.
#[test]
fn malformed_requests_are_invalid_argument_naming_the_field() {
    let env = start("enforce", &[]);
    let out = env.cli(&[
        "events",
        "--to-cidr",
        "10.0.0.0/8",
        "--to-cidr",
        "not-a-cidr",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument: filter.dst_cidrs[1]: \"not-a-cidr\" is not a CIDR"),
        "{err}"
    );
    let out = env.cli(&["events", "--port", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidArgument: filter.ports[0]"));
    rt().block_on(async {
        let mut c = env.client().await;
        let e = c
            .check_policy(pb::CheckPolicyRequest {
                text: " ".into(),
                file_name: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("text: empty"), "{}", e.message());
        let e = c
            .stream_events(pb::StreamEventsRequest {
                filter: None,
                last: 1_000_000,
                follow: false,
                after_seq: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("last:"));
        // Absurd filters: refused with the limit, the daemon unaffected.
        let cidrs = pb::EventFilter {
            dst_cidrs: (0..100_000)
                .map(|i| format!("10.{}.{}.0/24", i / 256 % 256, i % 256))
                .collect(),
            ..Default::default()
        };
        let e = c
            .query_events(pb::QueryEventsRequest {
                filter: Some(cidrs.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(
            e.message()
                .contains("filter.dst_cidrs: 100000 entries, at most 1024"),
            "{e}"
        );
        let e = c
            .stream_events(pb::StreamEventsRequest {
                filter: Some(cidrs),
                last: 0,
                follow: true,
                after_seq: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let glob = pb::EventFilter {
            cgroup_globs: vec!["*".repeat(10 << 20)],
            ..Default::default()
        };
        let e = c
            .query_flows(pb::QueryFlowsRequest {
                filter: Some(glob),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("10485760 bytes, at most 1024"), "{e}");
        // Over the request limit: gRPC's own refusal, before decoding.
        let e = c
            .query_events(pb::QueryEventsRequest {
                filter: Some(pb::EventFilter {
                    names: vec!["x".repeat(20 << 20)],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
        // A page token of another store (or none this server gave).
        for bad in ["00112233445566778899aabbccddeeff:5", "5"] {
            let e = c
                .query_events(pb::QueryEventsRequest {
                    page_token: bad.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            assert!(e.message().starts_with("page_token:"), "{e}");
        }
        // And the daemon still answers.
        c.get_status(pb::GetStatusRequest {}).await.unwrap();
        // A bad policy is a valid question with a negative answer.
        let r = c
            .check_policy(pb::CheckPolicyRequest {
                text: "apiVersion: egress-monitor.io/v1\nkind: Nope\n".into(),
                file_name: "x.yaml".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.valid);
        assert!(r.error.starts_with("x.yaml:"), "{}", r.error);
    });
}

/// grpcurl, with nothing but reflection: list, health, status, and a
/// filtered stream of denied events.
#[test]
fn grpcurl_works_through_reflection() {
    let mut env = start("enforce", &[]);
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(!p.ok);
    env.expect_event("denied", WAIT, |e| e["tgid"].as_u64() == Some(p.pid));
    let grpcurl = |args: &[&str]| {
        let out = Command::new(venv_bin("grpcurl"))
            .args([
                "-plaintext",
                "-unix",
                "-authority",
                "localhost",
                "-max-time",
                "10",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sock = env.socket();
    let sock = sock.to_str().unwrap();
    let services = grpcurl(&[sock, "list"]);
    assert!(
        services.contains("egress_monitor.v1.EgressMonitor")
            && services.contains("grpc.health.v1.Health"),
        "{services}"
    );
    let health = grpcurl(&[sock, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let health = grpcurl(&[
        "-d",
        r#"{"service":"egress_monitor.v1.EgressMonitor"}"#,
        sock,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let status: Value = serde_json::from_str(&grpcurl(&[
        sock,
        "egress_monitor.v1.EgressMonitor/GetStatus",
    ]))
    .unwrap();
    assert_eq!(status["counters"]["denied"], "1", "{status}");
    let stream = grpcurl(&[
        "-d",
        r#"{"filter":{"verdicts":["denied"],"countries":["US"]},"last":10}"#,
        sock,
        "egress_monitor.v1.EgressMonitor/StreamEvents",
    ]);
    let v: Value = serde_json::from_str(&stream).unwrap();
    assert_eq!(v["event"]["dstIp"], US_V4);
    assert_eq!(v["event"]["verdict"], "denied");
}

/// A Python client generated from our proto by grpcio-tools.
#[test]
fn generated_python_client_works() {
    let mut env = start("enforce", &[]);
    let p = env.probe("sel", &["tcp", US_V6, &PORT.to_string()]);
    assert!(!p.ok);
    assert!(env.probe("sel", &["tcp", DE_V4, &PORT.to_string()]).ok);
    env.expect_event("denied", WAIT, |e| e["tgid"].as_u64() == Some(p.pid));
    let out_dir = tempfile::tempdir().unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor/proto");
    let out = Command::new(venv_bin("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py"))
        .arg(&proto)
        .arg(env.socket())
        .arg(out_dir.path())
        .arg("US")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for hook in ["egress", "connect4", "connect6", "sendmsg4", "sendmsg6"] {
        assert!(
            v["programs"].as_array().unwrap().iter().any(|h| h == hook),
            "{v}"
        );
    }
    assert_eq!(v["policies"], serde_json::json!(["eu-only"]));
    assert_eq!(v["denied"], 1);
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0]["dst_ip"], US_V6);
    assert_eq!(v["bad_request"]["code"], "INVALID_ARGUMENT");
}

/// Every filter is applied by the server: the client receives exactly the
/// matching events and nothing else.
#[test]
fn filters_are_applied_on_the_server() {
    let mut env = start("monitor", &[]);
    std::fs::create_dir_all(env.cgroup("sel/other")).unwrap();
    let mut pids = Vec::new();
    for (cg, proto, addr, port) in [
        ("sel", "tcp", US_V4, PORT),
        ("sel", "udp", US_V4, 8081),
        ("sel", "tcp", DE_V4, PORT),
        ("sel/other", "tcp", US_V6, PORT),
        ("sel/other", "udp", DE_V6, 8081),
    ] {
        let p = env.probe(cg, &[proto, addr, &port.to_string()]);
        assert!(p.ok, "monitor mode: {:?}", p.raw);
        pids.push(p.pid);
    }
    let last = pids[4];
    env.expect_event("all five", WAIT, |e| e["tgid"].as_u64() == Some(last));
    let ours = |f: &pb::EventFilter| {
        let mut f = f.clone();
        f.pids = pids.iter().map(|p| *p as u32).collect();
        f
    };
    rt().block_on(async {
        let mut c = env.client().await;
        let other = env.rel("sel/other");
        let cases: Vec<(&str, pb::EventFilter, usize)> = vec![
            (
                "verdict",
                pb::EventFilter {
                    verdicts: vec!["would_deny".into()],
                    ..Default::default()
                },
                3,
            ),
            (
                "verdict allowed",
                pb::EventFilter {
                    verdicts: vec!["allowed".into()],
                    ..Default::default()
                },
                2,
            ),
            (
                "policy",
                pb::EventFilter {
                    policies: vec!["eu-only".into()],
                    ..Default::default()
                },
                5,
            ),
            (
                "no such policy",
                pb::EventFilter {
                    policies: vec!["nope".into()],
                    ..Default::default()
                },
                0,
            ),
            (
                "cgroup glob",
                pb::EventFilter {
                    cgroup_globs: vec![format!("{}/*", env.rel("sel"))],
                    ..Default::default()
                },
                2,
            ),
            (
                "cgroup exact",
                pb::EventFilter {
                    cgroup_globs: vec![other.clone()],
                    ..Default::default()
                },
                2,
            ),
            (
                "cidr",
                pb::EventFilter {
                    dst_cidrs: vec!["203.0.113.0/24".into()],
                    ..Default::default()
                },
                2,
            ),
            (
                "cidr v6",
                pb::EventFilter {
                    dst_cidrs: vec!["2001:db8::/32".into()],
                    ..Default::default()
                },
                2,
            ),
            (
                "country",
                pb::EventFilter {
                    countries: vec!["DE".into()],
                    ..Default::default()
                },
                2,
            ),
            (
                "port",
                pb::EventFilter {
                    ports: vec![8081],
                    ..Default::default()
                },
                2,
            ),
            (
                "protocol",
                pb::EventFilter {
                    protocols: vec!["udp".into()],
                    ..Default::default()
                },
                2,
            ),
            (
                "comm",
                pb::EventFilter {
                    comms: vec!["probe".into()],
                    ..Default::default()
                },
                5,
            ),
            (
                "other comm",
                pb::EventFilter {
                    comms: vec!["curl".into()],
                    ..Default::default()
                },
                0,
            ),
            (
                "uid",
                pb::EventFilter {
                    uids: vec![0],
                    ..Default::default()
                },
                5,
            ),
            (
                "other uid",
                pb::EventFilter {
                    uids: vec![1000],
                    ..Default::default()
                },
                0,
            ),
            (
                "combined",
                pb::EventFilter {
                    countries: vec!["US".into()],
                    protocols: vec!["tcp".into()],
                    ..Default::default()
                },
                2,
            ),
        ];
        for (what, filter, expected) in cases {
            let filter = ours(&filter);
            let req = pb::StreamEventsRequest {
                filter: Some(filter.clone()),
                last: 1000,
                follow: false,
                after_seq: None,
            };
            let mut stream = c.stream_events(req).await.unwrap().into_inner();
            let mut got = Vec::new();
            while let Some(msg) = stream.message().await.unwrap() {
                match msg.item {
                    Some(Item::Event(e)) => got.push(e),
                    other => panic!("{what}: unexpected {other:?}"),
                }
            }
            assert_eq!(got.len(), expected, "{what}: {got:#?}");
            let check = monitor::api::filter::Filter::compile(filter).unwrap();
            for e in got {
                assert!(
                    check.matches(&e.into()),
                    "{what}: a non-matching event arrived"
                );
            }
        }
        // Only one pid: the filter matches pid or tgid.
        let req = pb::StreamEventsRequest {
            filter: Some(pb::EventFilter {
                pids: vec![pids[0] as u32],
                ..Default::default()
            }),
            last: 1000,
            follow: false,
            after_seq: None,
        };
        let mut stream = c.stream_events(req).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(msg) = stream.message().await.unwrap() {
            if let Some(Item::Event(e)) = msg.item {
                assert_eq!(u64::from(e.tgid), pids[0]);
                n += 1;
            }
        }
        assert_eq!(n, 1);
    });
}

/// A stalled client misses events and is told how many, while another
/// client receives every one of them.
#[test]
fn a_stalled_client_gets_a_gap_and_does_not_slow_others() {
    const BURST: u64 = 20_000;
    let env = start("monitor", &["--ring-buffer-bytes", "16777216"]);
    rt().block_on(async {
        let mut reader = env.client().await;
        let mut staller = env.client().await;
        let filter = pb::EventFilter {
            protocols: vec!["udp".into()],
            dst_cidrs: vec![format!("{DE_V4}/32")],
            ..Default::default()
        };
        let req = pb::StreamEventsRequest {
            filter: Some(filter),
            last: 0,
            follow: true,
            after_seq: None,
        };
        let mut live = reader
            .stream_events(req.clone())
            .await
            .unwrap()
            .into_inner();
        let mut stalled = staller.stream_events(req).await.unwrap().into_inner();

        let counter = tokio::spawn(async move {
            let mut events = 0u64;
            let mut gaps = 0u64;
            while events < BURST {
                match tokio::time::timeout(Duration::from_secs(20), live.message()).await {
                    Ok(Ok(Some(m))) => match m.item {
                        Some(Item::Event(_)) => events += 1,
                        Some(Item::Gap(g)) => gaps += g.missed,
                        None => {}
                    },
                    _ => break,
                }
            }
            (events, gaps)
        });
        let probe_env = &env;
        let p = tokio::task::block_in_place(|| {
            probe_env.probe(
                "sel",
                &[
                    "udp-burst",
                    DE_V4,
                    "8081",
                    &BURST.to_string(),
                    &BURST.to_string(),
                ],
            )
        });
        assert!(p.ok, "{:?}", p.raw);
        let (events, gaps) = counter.await.unwrap();
        assert_eq!(
            (events, gaps),
            (BURST, 0),
            "the reading client got every event"
        );

        // Now the stalled client reads: what it got plus what it was told it
        // missed is exactly the burst.
        let mut events = 0u64;
        let mut missed = 0u64;
        while events + missed < BURST {
            match tokio::time::timeout(Duration::from_secs(5), stalled.message()).await {
                Ok(Ok(Some(m))) => match m.item {
                    Some(Item::Event(_)) => events += 1,
                    Some(Item::Gap(g)) => missed += g.missed,
                    None => {}
                },
                other => panic!(
                    "stalled stream ended early after {events} events, {missed} missed: {other:?}"
                ),
            }
        }
        assert!(
            missed > 0,
            "a stalled client must miss events; got all {events}"
        );
        assert_eq!(events + missed, BURST);
        let status = reader
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let c = status.counters.unwrap();
        assert!(c.dropped_slow_clients >= missed, "{c:?}");
        assert_eq!(c.lost_in_kernel, 0, "{c:?}");
    });
}

/// `bin` run as this uid and gid, with no supplementary groups.
fn as_user_command(uid: u32, gid: u32, bin: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
    ])
    .arg(bin);
    cmd
}

fn as_user(uid: u32, gid: u32, args: &[&str], env: &TestEnv) -> std::process::Output {
    as_user_command(uid, gid, &daemon_bin())
        .args(args)
        .arg("--socket")
        .arg(env.socket())
        .output()
        .unwrap()
}

/// Each method called with an empty request on the daemon's socket as this
/// uid and gid: one `{"method", "code", "message"}` per method.
fn grpc_calls_as(uid: u32, gid: u32, env: &TestEnv, methods: &[String]) -> Vec<Value> {
    let out = as_user_command(uid, gid, &grpc_call_bin())
        .arg(env.socket())
        .args(methods)
        .output()
        .unwrap();
    let got = json_lines(&out);
    assert_eq!(got.len(), methods.len(), "one answer per method: {got:?}");
    for (method, answer) in methods.iter().zip(&got) {
        assert_eq!(answer["method"], method.as_str(), "{got:?}");
    }
    got
}

/// The EgressMonitor service's methods as gRPC paths, from its descriptor
/// ("+stream" on the server-streaming ones, for `grpc-call`).
fn egress_monitor_methods() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the service's descriptor set decodes");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in file.service.iter().filter(|s| s.name() == "EgressMonitor") {
            for m in &service.method {
                methods.push(format!(
                    "/{}.{}/{}{}",
                    file.package(),
                    service.name(),
                    m.name(),
                    if m.server_streaming() { "+stream" } else { "" }
                ));
            }
        }
    }
    assert!(
        methods.len() >= 7,
        "the descriptor names the service's methods: {methods:?}"
    );
    methods
}

/// The unix socket: a user outside its group is refused; a member of the
/// socket group is a viewer and may not reload; root is an admin.
#[test]
fn unix_socket_roles() {
    let env = start("enforce", &["--socket-group", "nogroup"]);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&env.socket()), 0o660);
    // The group reaches the socket through the state directory and may
    // read the history it can query anyway; nobody else either.
    let state = env.dir.path().join("state");
    assert_eq!(mode(&state), 0o750);
    assert_eq!(mode(&state.join("store.db")), 0o640);
    assert_eq!(mode(&state.join("node.key")), 0o600);

    let out = as_user(1, 1, &["status"], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to") && err.contains("Permission denied"),
        "{err}"
    );

    let out = as_user(65534, 65534, &["status"], &env);
    assert!(
        out.status.success(),
        "viewer status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(65534, 65534, &["policy", "reload"], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "ReloadPolicies: PermissionDenied: /egress_monitor.v1.EgressMonitor/ReloadPolicies \
             needs the admin role; this client is a viewer"
        ),
        "{err}"
    );

    // Nothing changed: the generation stays (it was bumped with identical
    // content); --force writes the set again.
    let out = env.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "root reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("nothing changed: policy set generation 1 stays in force"),
        "{out:?}"
    );
    let out = env.cli(&["policy", "reload", "--force"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy set generation 2 in force"));
    assert_eq!(env.status()["policy_generation"].as_u64(), Some(2));
}

/// Every method of the service, found in its descriptor, refuses a caller
/// without a role, and ReloadPolicies refuses a viewer, before a handler runs.
#[test]
fn every_method_refuses_a_caller_without_the_role_it_needs() {
    let env = start("enforce", &["--socket-group", "nogroup"]);
    // The state directory's and the socket's modes are the first gates
    // (unix_socket_roles); open them so that what refuses here is the
    // second, the role check on every call.
    for (path, mode) in [(env.dir.path().join("state"), 0o755), (env.socket(), 0o666)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let methods = egress_monitor_methods();
    for answer in grpc_calls_as(1, 1, &env, &methods) {
        let message = s(&answer, "message");
        assert_eq!(answer["code"], "PermissionDenied", "{answer}");
        assert!(
            message.contains("role; uid 1 is neither root nor in the socket or admin group"),
            "{answer}"
        );
    }

    let reload = methods
        .iter()
        .find(|m| m.ends_with("/ReloadPolicies"))
        .expect("ReloadPolicies is in the descriptor")
        .clone();
    let viewer = grpc_calls_as(
        65534,
        65534,
        &env,
        &[
            reload,
            "/egress_monitor.v1.EgressMonitor/GetStatus".into(),
            "/grpc.health.v1.Health/Check".into(),
        ],
    );
    assert_eq!(viewer[0]["code"], "PermissionDenied", "{viewer:?}");
    assert!(
        s(&viewer[0], "message").ends_with("needs the admin role; this client is a viewer"),
        "{viewer:?}"
    );
    // The same empty requests are served when the role suffices.
    assert_eq!(viewer[1]["code"], "Ok", "{viewer:?}");
    assert_eq!(viewer[2]["code"], "Ok", "{viewer:?}");
    // The refused reload never reached the handler: no new generation.
    let status: Value = serde_json::from_slice(&env.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["policy_generation"], 1, "{status}");
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("egress-monitor test CA");
        let (rogue_cert, rogue_key) = ca("rogue CA");
        write("ca.pem", ca_cert.pem());
        let leaf = |name: &str,
                    cn: &str,
                    sans: Vec<String>,
                    issuer: &rcgen::Certificate,
                    issuer_key: &KeyPair| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        leaf(
            "server",
            "localhost",
            vec!["localhost".into()],
            &ca_cert,
            &ca_key,
        );
        leaf("admin", "ops-admin", vec![], &ca_cert, &ca_key);
        leaf("viewer", "analyst", vec![], &ca_cert, &ca_key);
        leaf("rogue", "ops-admin", vec![], &rogue_cert, &rogue_key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's flags for TLS on `listen` with the test PKI; the
/// certificate named `ops-admin` is the admin.
fn tls_args(pki: &Pki, listen: &str) -> Vec<String> {
    [
        "--listen",
        listen,
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--tls-client-ca",
        &pki.path("ca.pem"),
        "--tls-admin-name",
        "ops-admin",
    ]
    .map(String::from)
    .to_vec()
}

/// TCP with TLS: client certificates decide the role; a connection without
/// a certificate, or with one from another CA, is refused in the handshake.
#[test]
fn tls_clients_need_a_valid_certificate() {
    let pki = Pki::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let tls = tls_args(&pki, &listen);
    let env = start(
        "enforce",
        &tls.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let server = format!("https://localhost:{port}");
    let remote = |who: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(daemon_bin());
        cmd.args(args)
            .args(["--server", &server, "--tls-ca", &pki.path("ca.pem")]);
        if let Some(who) = who {
            cmd.args([
                "--tls-cert",
                &pki.path(&format!("{who}.pem")),
                "--tls-key",
                &pki.path(&format!("{who}.key")),
            ]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = remote(Some("viewer"), &["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("connect4 (id "), "{text}");
    let (ok, text) = remote(Some("viewer"), &["policy", "reload"]);
    assert!(!ok && text.contains("PermissionDenied"), "{text}");
    let (ok, text) = remote(Some("admin"), &["policy", "reload"]);
    assert!(ok, "{text}");
    let (ok, text) = remote(None, &["status"]);
    assert!(
        !ok,
        "a client without a certificate must be refused: {text}"
    );
    assert!(!text.contains("connect4 (id "), "{text}");
    assert!(
        !text.contains("Unauthenticated"),
        "refused in the handshake, not by a call: {text}"
    );
    assert!(
        !env.log()
            .contains("refused /egress_monitor.v1.EgressMonitor/GetStatus"),
        "the call without a certificate never reached the server's services"
    );
    let (ok, text) = remote(Some("rogue"), &["status"]);
    assert!(!ok, "a certificate from another CA must be refused: {text}");
    assert!(!text.contains("programs"), "{text}");
    drop(env);
}

/// Anyone who can reach `--listen` opens idle TCP connections that never
/// send a ClientHello, and a local client idle unix-socket connections,
/// more of them together than the daemon has descriptors (it runs with
/// RLIMIT_NOFILE 512 here). Each transport takes a bounded number at a
/// time, so the daemon keeps descriptors for its own work: enforcement
/// holds throughout (a forbidden connect hammered from the selected
/// cgroup and from a cgroup made during the flood reaches nothing), the
/// unix socket answers during the TCP flood, the idle TLS peers are
/// dropped after the handshake timeout, and after the unix flood the
/// socket answers again.
#[test]
fn a_connection_flood_switches_nothing_off() {
    // This test's own side of the flood needs the descriptors.
    // SAFETY: getrlimit/setrlimit on live structs.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let pki = Pki::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = TestEnv::new();
    env.daemon_nofile = Some(512);
    env.set_policy("enforce", "DE");
    let tls = tls_args(&pki, &listen);
    env.start_daemon(&tls.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = env.daemon_pid().unwrap();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // More than the daemon has descriptors; the flood stops where a
    // connect no longer completes (the daemon takes no more and the
    // listen backlog is full).
    const FLOOD: usize = 900;
    let started = std::time::Instant::now();
    let mut tcp = flood("TCP", FLOOD, std::io::ErrorKind::TimedOut, || {
        std::net::TcpStream::connect_timeout(&listen.parse().unwrap(), Duration::from_secs(1))
    });
    let held = descriptors();
    eprintln!(
        "{} idle TCP connections in {:?}; the daemon holds {held} descriptors",
        tcp.len(),
        started.elapsed(),
    );
    assert!(
        held < 512,
        "the TCP flood took the daemon's descriptors: {held}"
    );
    std::fs::create_dir_all(env.cgroup("sel/new")).unwrap();
    for sub in ["sel", "sel/new"] {
        let h = env.hammer(sub, 800);
        env.assert_nothing_through(h, &format!("{sub}, during the TCP flood"));
    }
    assert!(
        env.cli(&["status"]).status.success(),
        "the unix socket stopped answering during the TCP flood"
    );

    let unix = flood("unix", FLOOD, std::io::ErrorKind::WouldBlock, || {
        connect_unix_nonblocking(&env.socket())
    });
    let held = descriptors();
    eprintln!(
        "and {} idle unix connections; the daemon holds {held} descriptors",
        unix.len()
    );
    assert!(held < 512, "the daemon is at its descriptor limit: {held}");
    let h = env.hammer("sel/new", 800);
    env.assert_nothing_through(h, "during both floods");
    // No descriptor ran out anywhere in the daemon (the walk, the link
    // check, the store): each would say "Too many open files".
    for needle in ["rescan failed", "Too many open files", "enforcement is OFF"] {
        assert!(
            !env.log().contains(needle),
            "{needle:?} during the flood:\n{}",
            env.log()
        );
    }

    // The idle TLS peers are dropped after the handshake timeout.
    let first = &mut tcp[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(first, &mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle TLS peer was not dropped: {n:?}"
    );
    drop(unix);
    drop(tcp);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !env.cli(&["status"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the unix socket does not answer after the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_dir(env.cgroup("sel/new")).unwrap();
}

/// A unix-socket connect that fails with EAGAIN instead of waiting when
/// the listener's backlog is full.
/// Up to `n` idle connections, until one fails with `full` (the server
/// stops taking them); more than 100 of them.
fn flood<T>(
    what: &str,
    n: usize,
    full: std::io::ErrorKind,
    mut connect: impl FnMut() -> std::io::Result<T>,
) -> Vec<T> {
    let mut held = Vec::new();
    while held.len() < n {
        match connect() {
            Ok(c) => held.push(c),
            Err(e) if e.kind() == full => break,
            Err(e) => panic!("{what} flood connection {}: {e}", held.len()),
        }
    }
    assert!(
        held.len() > 100,
        "the {what} flood made only {} connections",
        held.len()
    );
    held
}

fn connect_unix_nonblocking(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    // SAFETY: plain socket creation; owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_un, filled below within its bounds.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a live address of the right size.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes:
/// the peak catches an expansion that was freed again before the reading.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A policy of one `scalar`-byte CIDR string anchored in `allow.cidrs` and
/// aliased `aliases` times: `aliases` × `scalar` bytes once expanded.
fn alias_bomb(scalar: usize, aliases: usize) -> String {
    let mut text = String::from(
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: bomb}\nspec:\n  mode: monitor\n  selector: {cgroupPaths: [\"/a\"]}\n  allow:\n    cidrs: [&a \"",
    );
    text.push_str(&"1".repeat(scalar));
    text.push('"');
    text.push_str(&",*a".repeat(aliases));
    text.push_str("]\n");
    text
}

/// Issue 36: one viewer's CheckPolicy must not kill the daemon. The
/// issue's alias bomb (850 KB, 60 GB expanded) is over the text limit; one
/// under it (220 KB, 4 GB expanded) is refused at its anchor before
/// anything is expanded. The daemon answers afterwards, its memory barely
/// moved. And a policy file that links out of the policy directory (to a
/// secret-looking file) is rejected without its content reaching viewers.
#[test]
fn a_viewers_alias_bomb_is_refused_and_the_daemon_lives() {
    let pki = Pki::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let tls = tls_args(&pki, &listen);
    let env = start(
        "enforce",
        &tls.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let pid = env.daemon_pid().expect("the daemon runs");
    let secret = "S3cr3tT0kenNeverShown";
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("shadow"),
        format!("{secret}:$6$salt$hash:19000:0:99999:7:::\n"),
    )
    .unwrap();
    rt().block_on(async {
        let args = monitor::api::client::ConnectArgs {
            socket: None,
            server: Some(format!("https://localhost:{port}")),
            tls_ca: Some(pki.path("ca.pem").into()),
            tls_cert: Some(pki.path("viewer.pem").into()),
            tls_key: Some(pki.path("viewer.key").into()),
            tls_server_name: None,
        };
        let mut c = monitor::api::client::connect(&args).await.unwrap();
        // A viewer indeed.
        let e = c
            .reload_policies(pb::ReloadPoliciesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        c.get_status(pb::GetStatusRequest {}).await.unwrap();
        let before = rss_of(pid);

        let bomb = alias_bomb(400_000, 150_000);
        assert!(bomb.len() > 840_000, "{}", bomb.len());
        let e = c
            .check_policy(pb::CheckPolicyRequest {
                text: bomb.clone(),
                file_name: "bomb.yaml".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(
            e.message().starts_with(&format!(
                "text: {} bytes is more than the 262144 bytes (256 KiB) CheckPolicy takes",
                bomb.len()
            )),
            "{e}"
        );

        let small = alias_bomb(100_000, 40_000);
        assert!(small.len() < 256 << 10, "{}", small.len());
        for _ in 0..3 {
            let r = c
                .check_policy(pb::CheckPolicyRequest {
                    text: small.clone(),
                    file_name: "bomb.yaml".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!r.valid);
            assert_eq!(r.line, 8);
            assert_eq!(
                r.error,
                "bomb.yaml:8: anchors and aliases are not accepted in a policy: line 8 (an anchor, `&` at column 13)"
            );
        }
        // Still answering, and its memory did not balloon (without the
        // refusal, each check above expands to 4 GB).
        let s = c
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.policy_generation, 1);
        let after = rss_of(pid);
        assert!(
            after.0 < before.0 + (50 << 20) && after.1 < before.1 + (50 << 20),
            "(VmRSS, VmHWM) grew from {before:?} to {after:?} bytes"
        );

        // A policy file that links out of the directory: rejected, and
        // what viewers see of it names the link, not what it leads to holds.
        std::os::unix::fs::symlink(
            outside.path().join("shadow"),
            env.policy_dir().join("shadow.yaml"),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let rejected = loop {
            let l = c
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .unwrap()
                .into_inner();
            if let Some(r) = l.rejected_files.first() {
                break r.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the link was not rejected: {l:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            rejected.file.ends_with("shadow.yaml")
                && rejected.error.contains("outside the policy directory")
                && rejected.error.contains("not read"),
            "{rejected:?}"
        );
        assert!(!rejected.error.contains(secret), "{rejected:?}");
        // Its check, as a viewer would send the same content, shows no value.
        let r = c
            .check_policy(pb::CheckPolicyRequest {
                text: std::fs::read_to_string(outside.path().join("shadow")).unwrap(),
                file_name: "shadow.yaml".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.valid && !r.error.contains(secret), "{}", r.error);
    });
    drop(env);
}
