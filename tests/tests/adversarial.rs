//! Bypass attempts from inside an enforcing cgroup. For each route: the
//! attempt fails, nothing reaches the test host (the server in the test
//! namespace reports what it receives), and an event names what was
//! attempted and which hook stopped it. In monitor mode the same attempts
//! go through with a would_deny event. The allowed country keeps working.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::*;
use serde_json::Value;

const EPERM: i64 = 1;
const WAIT: Duration = Duration::from_secs(5);
fn env(mode: &str, allow: &str) -> TestEnv {
    TestEnv::started(mode, allow, &[])
}

/// What reached the US side of the test network.
fn us_received(env: &TestEnv) -> Vec<Value> {
    env.received().into_iter().filter(from_us_side).collect()
}

fn event_for(env: &mut TestEnv, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.expect_event(what, WAIT, pred)
}

fn allowed_still_works(env: &TestEnv) {
    let p = env.probe("sel", &["tcp", DE_V4, &PORT.to_string()]);
    assert!(p.ok, "the allowed country must keep working: {:?}", p.raw);
}

/// Every UDP send path and socket-address trick, stopped at the sock_addr
/// hooks with EPERM.
#[test]
fn udp_and_connect_variants_are_refused() {
    let mut env = env("enforce", "DE");
    let port = PORT.to_string();
    let cases: [(&str, Vec<&str>, &str, &str); 11] = [
        ("sendto", vec!["udp", US_V4, &port], "sendmsg4", US_V4),
        ("sendmsg", vec!["sendmsg", US_V4, &port], "sendmsg4", US_V4),
        (
            "sendmmsg",
            vec!["sendmmsg", US_V4, &port],
            "sendmsg4",
            US_V4,
        ),
        (
            "sendmsg v6",
            vec!["sendmsg", US_V6, &port],
            "sendmsg6",
            US_V6,
        ),
        (
            "mapped udp",
            vec!["udp", US_MAPPED, &port],
            "sendmsg4",
            US_V4,
        ),
        (
            "mapped tcp",
            vec!["tcp", US_MAPPED, &port],
            "connect6",
            US_V4,
        ),
        (
            "connected, then sendto",
            vec!["connected-sendto", DE_V4, US_V4, &port],
            "sendmsg4",
            US_V4,
        ),
        (
            "tcp fast open",
            vec!["tfo", US_V4, &port],
            "connect4",
            US_V4,
        ),
        (
            "io_uring connect",
            vec!["uring-connect", US_V4, &port],
            "connect4",
            US_V4,
        ),
        (
            "io_uring sendmsg",
            vec!["uring-sendmsg", US_V6, &port],
            "sendmsg6",
            US_V6,
        ),
        (
            "new network namespace",
            vec!["unshare", US_V4, &port],
            "connect4",
            US_V4,
        ),
    ];
    // Each case to a port of its own: a repeat of a destination is counted
    // in the kernel's flow table, not reported again.
    for (i, (what, mut args, hook, dst)) in cases.into_iter().enumerate() {
        let own_port = (PORT + 100 + i as u16).to_string();
        if let Some(last) = args.last_mut() {
            *last = &own_port;
        }
        let p = env.probe("sel", &args);
        assert!(
            !p.ok && p.errno == EPERM,
            "{what}: must fail with EPERM: {:?}",
            p.raw
        );
        let e = event_for(&mut env, what, |e| {
            e["tgid"].as_u64() == Some(p.pid) && s(e, "dst_ip") == dst
        });
        assert_eq!(
            (s(&e, "verdict"), s(&e, "hook")),
            ("denied", hook),
            "{what}: {e}"
        );
    }
    allowed_still_works(&env);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        us_received(&env),
        Vec::<Value>::new(),
        "something reached the US hosts"
    );
}

/// Raw IP and ICMP ping sockets never pass a sock_addr hook: the egress
/// backstop drops their packets and reports them.
#[test]
fn raw_and_ping_sockets_are_stopped_by_the_egress_backstop() {
    let mut env = env("enforce", "DE");
    // Each to a host of its own (ICMP has no port; a repeat of a
    // destination is counted in the flow table, not reported again).
    for (mode, addr) in [
        ("raw", US_V4),
        ("ping", US2_V4),
        ("raw", US_V6),
        ("ping", US2_V6),
    ] {
        // The send may even report success (ping sockets over IPv6 do not
        // pass a dropped packet's error up); what counts is that nothing
        // leaves and the drop is reported.
        let p = env.probe("sel", &[mode, addr]);
        eprintln!("{mode} {addr}: {:?}", p.raw);
        let e = event_for(&mut env, &format!("{mode} {addr}"), |e| {
            s(e, "hook") == "egress" && s(e, "dst_ip") == addr
        });
        assert_eq!(s(&e, "verdict"), "denied");
        assert!(s(&e, "protocol").starts_with("icmp"), "{e}");
        assert_eq!(s(&e, "cgroup_path"), env.rel("sel"));
    }
    // `--protocol` picks them out of the history, each ICMP by its family.
    for (protocol, want) in [("icmp", [US_V4, US2_V4]), ("icmpv6", [US_V6, US2_V6])] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let found = json_lines(&env.cli(&[
                "events",
                "--since",
                "10m",
                "--protocol",
                protocol,
                "-o",
                "json",
            ]));
            let mut to: Vec<&str> = found.iter().map(|e| s(e, "dst_ip")).collect();
            to.sort_unstable();
            let mut want = want.to_vec();
            want.sort_unstable();
            assert!(
                found.iter().all(|e| s(e, "protocol") == protocol),
                "--protocol {protocol}: {found:#?}"
            );
            if to == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "--protocol {protocol}: {to:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The DE host answers pings from the same sockets.
    let p = env.probe("sel", &["ping", DE_V4]);
    assert!(p.ok, "{:?}", p.raw);
    allowed_still_works(&env);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        us_received(&env),
        Vec::<Value>::new(),
        "an echo request reached a US host"
    );
}

/// IPv6 extension headers (hop-by-hop and destination options, as MLD
/// reports carry) are walked: the backstop judges the real upper-layer
/// protocol, refuses the denied host and lets the allowed one through.
#[test]
fn ipv6_extension_headers_are_walked_to_the_upper_layer() {
    let mut env = env("enforce", "DE");
    let p = env.probe("sel", &["raw6-ext", US_V6]);
    eprintln!("raw6-ext {US_V6}: {:?}", p.raw);
    let e = event_for(&mut env, "an ICMPv6 echo behind extension headers", |e| {
        s(e, "hook") == "egress" && s(e, "dst_ip") == US_V6
    });
    assert_eq!(
        (s(&e, "verdict"), s(&e, "protocol")),
        ("denied", "icmpv6"),
        "{e}"
    );
    let p = env.probe("sel", &["raw6-ext", DE_V6]);
    assert!(p.ok, "the allowed host: {:?}", p.raw);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        us_received(&env),
        Vec::<Value>::new(),
        "an echo request reached the US host"
    );
    assert!(
        env.received()
            .iter()
            .any(|v| v.to_string().contains("echo")),
        "the DE host received no echo request: {:?}",
        env.received()
    );
}

/// Whether this host runs BPF LSM programs (the daemon says when not).
fn lsm_missing(env: &TestEnv) -> bool {
    let missing = env
        .log()
        .contains("packet sockets (AF_PACKET) cannot be refused on this host");
    if missing {
        eprintln!("SKIPPED: this kernel does not load BPF LSM programs, so packet sockets cannot be refused here; the daemon said so: {}",
            env.log().lines().find(|l| l.contains("AF_PACKET")).unwrap_or(""));
        assert!(
            env.log().contains("drop CAP_NET_RAW"),
            "the warning names the remedy"
        );
    }
    missing
}

/// Packet sockets send below IP: an enforcing policy refuses to create them
/// (through the BPF LSM, where the kernel has it).
#[test]
fn packet_sockets_are_refused_at_creation() {
    let mut env = env("enforce", "DE");
    if lsm_missing(&env) {
        return;
    }
    let p = env.probe("sel", &["packet"]);
    assert!(!p.ok && p.errno == EPERM, "{:?}", p.raw);
    let e = event_for(&mut env, "socket_create", |e| {
        e["tgid"].as_u64() == Some(p.pid)
    });
    assert_eq!(
        (
            s(&e, "hook"),
            s(&e, "family"),
            s(&e, "rule"),
            s(&e, "verdict")
        ),
        ("socket_create", "packet", "socket", "denied")
    );
    // Outside the selected cgroup nothing changes.
    assert!(env.probe("unsel", &["packet"]).ok);
}

/// A stream probe's process, its output and its pid.
type Stream = (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    u64,
);

fn stream(env: &TestEnv, sub: &str, proto: &str, secs: &str) -> Stream {
    let mut child = env
        .probe_command(sub, &["stream", proto, US_V4, &PORT.to_string(), secs])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("stream did not connect: {line}"));
    assert_eq!(v["connected"], true, "{line}");
    let pid = v["pid"].as_u64().unwrap();
    (child, out, pid)
}

/// Sockets connected while the destination was allowed: once the policy
/// denies it, the sweep at the switch destroys them and reports each.
#[test]
fn sockets_from_before_the_policy_are_cut_off() {
    let mut env = env("enforce", "DE, US");
    let (tcp, tcp_out, tcp_pid) = stream(&env, "sel", "tcp", "3");
    let (udp, udp_out, udp_pid) = stream(&env, "sel", "udp", "3");
    std::thread::sleep(Duration::from_millis(400));
    let flowing = us_received(&env);
    assert!(
        flowing.iter().any(|v| v.get("data").is_some()),
        "TCP data flows while allowed: {flowing:?}"
    );
    assert!(
        flowing.iter().any(|v| v.get("datagram").is_some()),
        "UDP flows while allowed: {flowing:?}"
    );

    env.set_policy("enforce", "DE");
    cut_off_at_the_switch(
        &mut env,
        "sel",
        [(tcp, tcp_out, tcp_pid), (udp, udp_out, udp_pid)],
    );
}

/// A TCP stream and a connected UDP socket opened while their cgroup
/// (`unsel`) was selected by no policy: when a second policy selects it and
/// denies their destination, the sweep at the switch destroys them (the
/// connect of an unselected cgroup leaves no mark on a TCP socket).
#[test]
fn connections_of_a_cgroup_selected_later_are_cut_off() {
    let mut env = env("enforce", "DE");
    let (tcp, tcp_out, tcp_pid) = stream(&env, "unsel", "tcp", "3");
    let (udp, udp_out, udp_pid) = stream(&env, "unsel", "udp", "3");
    std::thread::sleep(Duration::from_millis(400));
    let flowing = us_received(&env);
    assert!(
        flowing.iter().any(|v| v.get("data").is_some()),
        "TCP data flows while unselected: {flowing:?}"
    );
    assert!(
        flowing.iter().any(|v| v.get("datagram").is_some()),
        "UDP flows while unselected: {flowing:?}"
    );
    env.write_policy(
        "later.yaml",
        &env.policy("later", "enforce", "unsel", &allow_countries("DE")),
    );
    cut_off_at_the_switch(
        &mut env,
        "unsel",
        [(tcp, tcp_out, tcp_pid), (udp, udp_out, udp_pid)],
    );
}

/// After a policy write that denies the streams' destination for `sub`:
/// generation 2 is in force, nothing more reaches the US host, the sweep
/// reported each socket destroyed, each stream saw its socket aborted, and
/// the allowed country keeps working.
fn cut_off_at_the_switch(env: &mut TestEnv, sub: &str, streams: [Stream; 2]) {
    env.wait_status("policy generation 2", WAIT, |s| {
        s["policy_generation"].as_u64() == Some(2)
    });
    let switched = Instant::now();
    // Give packets in flight at the switch a moment, then nothing may arrive.
    std::thread::sleep(Duration::from_millis(300));
    let settled = us_received(env).len();
    std::thread::sleep(Duration::from_millis(1200));
    let later = us_received(env);
    assert_eq!(
        later.len(),
        settled,
        "traffic reached the US host {:?} after the switch: {:?}",
        switched.elapsed(),
        &later[settled..]
    );

    // The sweep at the switch judged and destroyed each socket, with an
    // event per socket (no process context: the event names the socket's
    // cgroup, not a pid).
    let cgroup = env.rel(sub);
    for proto in ["tcp", "udp"] {
        let e = event_for(env, proto, |e| {
            s(e, "hook") == "sock_destroy" && s(e, "protocol") == proto
        });
        assert_eq!(
            (s(&e, "verdict"), s(&e, "dst_ip"), s(&e, "cgroup_path")),
            ("denied", US_V4, cgroup.as_str()),
            "{e}"
        );
    }
    for (mut child, mut out, pid) in streams {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let _ = child.wait();
        let v: Value = serde_json::from_str(rest.trim()).unwrap();
        assert_eq!(
            (v["result"].as_str(), v["pid"].as_u64()),
            (Some("ok"), Some(pid)),
            "{v}"
        );
        assert!(aborted(&v), "the socket was not aborted: {v}");
    }
    allowed_still_works(env);
}

/// Whether a stream probe saw its socket destroyed: a TCP socket's next
/// send fails with ECONNABORTED; a destroyed UDP socket is disconnected, so
/// its next send has no destination (EDESTADDRREQ; a reader would get
/// ECONNABORTED).
fn aborted(v: &Value) -> bool {
    v["errnos"].as_array().is_some_and(|e| {
        e.contains(&Value::from(libc::ECONNABORTED)) || e.contains(&Value::from(libc::EDESTADDRREQ))
    })
}

/// What a probe printed at its end.
fn finish_json(
    mut child: std::process::Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> Value {
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let _ = child.wait();
    serde_json::from_str(rest.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("no result: {rest}"))
}

/// A probe's process and its output.
type Probe = (std::process::Child, BufReader<std::process::ChildStdout>);

/// A listener of the workload in `sel` (a sink, open `sink_secs`) and an
/// inbound TCP stream into it from the US host (`stream_secs`), connected.
fn inbound_stream(env: &TestEnv, sink_secs: &str, stream_secs: &str) -> (Probe, Probe) {
    let port = env.fresh_port().to_string();
    let mut sink = env
        .probe_command("sel", &["sink", &port, sink_secs])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sink_out = BufReader::new(sink.stdout.take().unwrap());
    let mut line = String::new();
    sink_out.read_line(&mut line).unwrap();
    assert!(line.contains("sinking"), "{line}");
    let mut inbound = std::process::Command::new("ip")
        .args(["netns", "exec", &env.netns])
        .arg(probe_bin())
        .args(["stream", "tcp", US_SOURCES[0], &port, stream_secs])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut inbound_out = BufReader::new(inbound.stdout.take().unwrap());
    line.clear();
    inbound_out.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"connected\":true"),
        "inbound connection from the US host to the workload's listener: {line}"
    );
    ((sink, sink_out), (inbound, inbound_out))
}

/// A listener a selected, enforcing workload opens while the daemon runs
/// takes an inbound connection from a denied place: its replies (the
/// SYN-ACK first) are not outbound attempts, so nothing cuts them.
#[test]
fn inbound_connections_to_a_new_listener_are_not_judged_as_egress() {
    let env = env("enforce", "DE");
    let ((sink, sink_out), (inbound, inbound_out)) = inbound_stream(&env, "3", "2");
    let inbound = finish_json(inbound, inbound_out);
    let sunk = finish_json(sink, sink_out);
    assert_eq!(
        inbound["failed"], 0,
        "the inbound connection was cut: {inbound}"
    );
    assert!(inbound["sent"].as_u64().unwrap_or(0) > 10, "{inbound}");
    assert!(sunk["tcp_bytes"].as_u64().unwrap_or(0) >= 50, "{sunk}");
}

/// Connections a workload opened before the daemon ever ran: when the first
/// policy set takes effect, the outbound ones to denied places are destroyed
/// (the receiving side proves nothing more arrives), an inbound connection
/// to the workload from a denied place survives, and in monitor mode the
/// same sockets are only reported.
#[test]
fn connections_older_than_the_daemon_are_destroyed_inbound_ones_survive() {
    for mode in ["enforce", "monitor"] {
        let mut env = TestEnv::new();
        env.set_policy(mode, "DE");
        // Before any daemon: an outbound TCP stream and a connected UDP
        // socket to the US host, and an inbound TCP stream from the US host
        // into a listener of the workload.
        let (tcp, tcp_out, _) = stream(&env, "sel", "tcp", "8");
        let (udp, udp_out, _) = stream(&env, "sel", "udp", "8");
        let ((sink, sink_out), (inbound, inbound_out)) = inbound_stream(&env, "9", "8");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            us_received(&env).iter().any(|v| v.get("data").is_some()),
            "TCP data flows before the daemon"
        );

        env.start_daemon(&[]);
        env.wait_log("sockets older than generation 1", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        let settled = us_received(&env).len();
        std::thread::sleep(Duration::from_millis(1200));
        let later = us_received(&env);
        let sel = env.rel("sel");
        let want = if mode == "enforce" {
            "denied"
        } else {
            "would_deny"
        };
        for proto in ["tcp", "udp"] {
            let e = event_for(&mut env, proto, |e| {
                s(e, "hook") == "sock_destroy" && s(e, "protocol") == proto
            });
            assert_eq!(
                (
                    s(&e, "verdict"),
                    s(&e, "dst_ip"),
                    s(&e, "cgroup_path"),
                    s(&e, "rule")
                ),
                (want, US_V4, sel.as_str(), "default"),
                "{e}"
            );
        }
        let out: Vec<Value> = [(tcp, tcp_out), (udp, udp_out)]
            .into_iter()
            .map(|(c, o)| finish_json(c, o))
            .collect();
        let inbound = finish_json(inbound, inbound_out);
        let sunk = finish_json(sink, sink_out);
        if mode == "enforce" {
            assert_eq!(
                later.len(),
                settled,
                "traffic reached the US host after the policy took effect: {:?}",
                &later[settled..]
            );
            for v in &out {
                assert!(
                    aborted(v),
                    "a denied connection older than the daemon was not aborted: {v}"
                );
            }
            assert!(env.log().contains("2 destroyed"), "{}", env.log());
        } else {
            assert!(later.len() > settled, "monitor mode cut traffic off");
            for v in &out {
                assert_eq!(v["failed"], 0, "monitor mode broke a connection: {v}");
            }
        }
        // The inbound connection from the US host kept working throughout.
        assert_eq!(
            inbound["failed"], 0,
            "the inbound connection was cut: {inbound}"
        );
        assert!(inbound["sent"].as_u64().unwrap_or(0) > 100, "{inbound}");
        assert!(sunk["tcp_bytes"].as_u64().unwrap_or(0) >= 5 * 50, "{sunk}");
        assert!(env.log().contains("1 inbound left alone"), "{}", env.log());
    }
}

/// A socket handed over SCM_RIGHTS: made outside and used inside is judged
/// by the task that connects; made inside and used outside is judged by
/// its own cgroup at the egress backstop, and counted as a connection.
#[test]
fn sockets_passed_between_cgroups_are_judged() {
    let mut env = env("enforce", "DE");
    let port = PORT.to_string();
    let unsel_procs = env.cgroup("unsel").join("cgroup.procs");
    let sel_procs = env.cgroup("sel").join("cgroup.procs");

    let p = env.probe(
        "sel",
        &["handoff", US_V4, &port, unsel_procs.to_str().unwrap()],
    );
    assert!(
        !p.ok && p.errno == EPERM,
        "made outside, used inside: {:?}",
        p.raw
    );
    let e = event_for(&mut env, "handoff in", |e| {
        e["tgid"].as_u64() == Some(p.pid)
    });
    assert_eq!(s(&e, "hook"), "connect4");

    // Another port: the destination above is decided and counted now.
    let other_port = (PORT + 1).to_string();
    let p = env.probe(
        "unsel",
        &["handoff", US_V4, &other_port, sel_procs.to_str().unwrap()],
    );
    // The backstop drops its SYN; the refusal makes the daemon destroy the
    // socket, so connect fails at once (ECONNABORTED) instead of waiting
    // for TCP's retries (minutes; the probe gives up after 2 s).
    assert!(
        !p.ok && p.errno == i64::from(libc::ECONNABORTED),
        "made inside, used outside: {:?}",
        p.raw
    );
    let e = event_for(&mut env, "handoff out", |e| {
        s(e, "hook") == "egress" && s(e, "protocol") == "tcp"
    });
    assert_eq!(
        (s(&e, "verdict"), s(&e, "dst_ip"), s(&e, "cgroup_path")),
        ("denied", US_V4, env.rel("sel").as_str())
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        us_received(&env)
            .iter()
            .all(|v| v.get("accepted").is_none()),
        "a handed-over socket connected"
    );
    allowed_still_works(&env);

    // Made inside and connected outside to an allowed host: its SYN is
    // judged by the socket's cgroup and gives it the state a hook would
    // have, so the packets after the SYN (the handshake's ACK, the close)
    // are counted in the flow too, not only the SYN.
    let allowed_port = PORT + 3;
    let p = env.probe(
        "unsel",
        &[
            "handoff",
            DE_V4,
            &allowed_port.to_string(),
            sel_procs.to_str().unwrap(),
        ],
    );
    assert!(p.ok, "made inside, used outside, allowed: {:?}", p.raw);
    let sel = env.rel("sel");
    let deadline = Instant::now() + WAIT;
    loop {
        let packets: u64 = env
            .flows(&[])
            .iter()
            .filter(|f| {
                s(f, "cgroup_path") == sel
                    && s(f, "dst_ip") == DE_V4
                    && f["dst_port"].as_u64() == Some(u64::from(allowed_port))
                    && s(f, "verdict") == "allowed"
            })
            .map(|f| f["packets"].as_u64().unwrap_or(0))
            .sum();
        if packets >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{packets} packets counted for a handed-over connection: {:#?}",
            env.flows(&[])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP socket made while its cgroup was selected by no policy, that
/// cgroup selected afterwards, and the socket connected by a process
/// outside every selected cgroup (the descriptor handed over): no hook saw
/// the socket made or connected in a selected cgroup, and the egress
/// backstop judges its SYN by the socket's cgroup all the same.
#[test]
fn a_socket_made_before_its_cgroup_is_selected_and_connected_outside_is_judged() {
    let mut env = env("enforce", "DE");
    std::fs::create_dir_all(env.cgroup("later")).unwrap();
    let later_procs = env.cgroup("later").join("cgroup.procs");
    let ready = env.dir.path().join("ready");
    let go = env.dir.path().join("go");
    let port = (PORT + 2).to_string();
    let probe = env
        .probe_command(
            "unsel",
            &[
                "handoff-when",
                US_V4,
                &port,
                later_procs.to_str().unwrap(),
                ready.to_str().unwrap(),
                go.to_str().unwrap(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run probe");
    let deadline = Instant::now() + WAIT;
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready.exists(), "the probe never held its socket");
    env.write_policy(
        "later.yaml",
        &env.policy("later", "enforce", "later", &allow_countries("DE")),
    );
    env.wait_status("policy generation 2", WAIT, |s| {
        s["policy_generation"].as_u64() == Some(2)
    });
    std::fs::write(&go, b"").unwrap();
    let out = probe.wait_with_output().expect("probe result");
    let raw: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The backstop drops the SYN and the daemon destroys the socket.
    assert_eq!(
        (raw["result"].as_str(), raw["errno"].as_i64()),
        (Some("error"), Some(i64::from(libc::ECONNABORTED))),
        "made before selection, connected outside: {raw}"
    );
    let e = event_for(&mut env, "connected outside", |e| {
        s(e, "hook") == "egress" && s(e, "protocol") == "tcp" && s(e, "dst_ip") == US_V4
    });
    assert_eq!(
        (s(&e, "verdict"), s(&e, "cgroup_path")),
        ("denied", env.rel("later").as_str())
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        us_received(&env)
            .iter()
            .all(|v| v.get("accepted").is_none()),
        "a socket made before its cgroup was selected connected"
    );
    allowed_still_works(&env);
}

/// Somebody else's cgroup program that allows everything, attached below
/// ours in every mode and above ours, does not undo a denial; the daemon
/// reports it.
#[test]
fn foreign_programs_cannot_undo_a_denial() {
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("inner/sel")).unwrap();
    env.attach_root = Some(env.cgroup("inner"));
    env.write_policy(
        "p.yaml",
        &env.policy(
            "eu-only",
            "enforce",
            "inner/sel",
            "  allow:\n    countries: [DE]\n",
        ),
    );
    env.start_daemon(&[]);
    let port = PORT.to_string();
    let denied = |env: &TestEnv| {
        let p = env.probe("inner/sel", &["tcp", US_V4, &port]);
        assert!(
            !p.ok && p.errno == EPERM,
            "a foreign program undid the denial: {:?}",
            p.raw
        );
    };
    denied(&env);
    // Below ours, on the selected cgroup itself: override, multi, exclusive.
    for flags in [1u32, 2, 0] {
        let errno = attach_permissive_connect4(&env.cgroup("inner/sel"), flags);
        eprintln!("permissive program below ours, flags {flags}: attach errno {errno}");
        denied(&env);
    }
    // Above ours.
    let errno = attach_permissive_connect4(&env.cgroup_root, 2);
    assert_eq!(errno, 0, "attaching above ours");
    denied(&env);
    env.wait_log("foreign BPF program id", WAIT);
    assert!(env.log().contains("on the connect4 hook"), "{}", env.log());
    assert!(env.probe("inner/sel", &["tcp", DE_V4, &port]).ok);
}

/// Monitor mode: the same routes go through, and each is reported as
/// would_deny by the hook that saw it.
#[test]
fn monitor_mode_lets_bypass_routes_through_and_reports_them() {
    let mut env = env("monitor", "DE");
    let port = PORT.to_string();
    let mut cases = vec![
        ("sendmsg", vec!["sendmsg", US_V4, &port], "sendmsg4"),
        (
            "io_uring connect",
            vec!["uring-connect", US_V4, &port],
            "connect4",
        ),
        ("raw icmp", vec!["raw", US_V4], "egress"),
    ];
    if !lsm_missing(&env) {
        cases.push(("packet socket", vec!["packet"], "socket_create"));
    }
    for (what, args, hook) in cases {
        let p = env.probe("sel", &args);
        assert!(p.ok, "{what}: monitor mode must not block: {:?}", p.raw);
        let e = event_for(&mut env, what, |e| {
            s(e, "hook") == hook && (e["tgid"].as_u64() == Some(p.pid) || hook == "egress")
        });
        assert_eq!(s(&e, "verdict"), "would_deny", "{what}: {e}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = us_received(&env);
    assert!(
        got.iter().any(|v| v.get("datagram").is_some()),
        "the datagram arrived: {got:?}"
    );
    assert!(
        got.iter().any(|v| v.get("echo_request").is_some()),
        "the echo request arrived: {got:?}"
    );
}
