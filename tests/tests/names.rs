//! Names judged in the kernel, against the real kernel: a resolver in the
//! test hosts' namespace answers test names on documentation addresses;
//! workloads in selected cgroups resolve and connect at once.
//!
//! The test database puts 198.51.100.0/24 in DE and 203.0.113.0/24 in US;
//! the policies allow DE (where the resolver is) and nothing else by
//! region, so an address in 203.0.113.0/24 is reachable only by a name.
use std::time::Duration;

use integration_tests::{s, TestEnv, DE_V4, PORT, US_V4};
use serde_json::{json, Value};

/// A DE address no host answers on: refused before any packet is built.
const DENIED_DE: &str = "198.51.100.3";

/// The test names: `allowed.test` and `api.svc.test` resolve into the US
/// range (opened by name), `denied.test` into the DE range (closed by
/// name), `alias.test` is a CNAME chain, `brief.test` has a TTL of 1 s.
fn zone() -> Value {
    let a = |ip: &str, ttl: u32| json!({"type": "A", "value": ip, "ttl": ttl});
    json!({
        "names": {
            "allowed.test": [a(US_V4, 60)],
            "api.svc.test": [a(US_V4, 60)],
            // Not the resolver's address: a name's addresses are judged by
            // the name on every port, the resolver's too.
            "denied.test": [a(DENIED_DE, 60)],
            "alias.test": [{"type": "CNAME", "value": "edge.cdn.test", "ttl": 60}],
            "edge.cdn.test": [{"type": "CNAME", "value": "target.test", "ttl": 60}],
            "target.test": [a(US_V4, 60)],
            "brief.test": [a(US_V4, 1)],
            "big.test": [a(US_V4, 60)],
            "other.test": [a(US_V4, 60)],
            "evil.test": [a(US_V4, 60)],
            "cut.test": [a(US_V4, 60)],
            "loop.test": [a(US_V4, 60)],
            "wrongid.test": [a(US_V4, 60)],
            "unsol.test": [a(DE_V4, 60)],
            "split.test": [a(US_V4, 60)],
            "*.flood.test": [a(US_V4, 60)],
            // An AAAA record that claims the IPv4 address.
            "mapped.test": [{"type": "AAAA", "value": format!("::ffff:{US_V4}"), "ttl": 60}],
            // `login.test` is allowed and not in the zone (NXDOMAIN): only
            // a forged answer could name an address for it.
        },
        "behaviours": {
            "big.test": "truncate",
            "other.test": "other-name=evil.test",
            "cut.test": "short",
            "loop.test": "loop",
            "wrongid.test": "wrong-id",
            "unsol.test": "extra-unsolicited",
            "split.test": "split-tcp",
        }
    })
}

/// An enforcing policy for `sel` (and `sel2`): DE by region, names by
/// domain rules. The names the bad-input cases answer for are allowed, so
/// a wrong mapping would show as an allowed connect.
fn policy(env: &TestEnv) -> String {
    format!(
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: names}}\nspec:\n  mode: enforce\n  selector:\n    cgroupPaths: [\"{}\", \"{}\"]\n  allow:\n    countries: [DE]\n    domains: [allowed.test, \"*.svc.test\", alias.test, brief.test, big.test, other.test, evil.test, cut.test, loop.test, wrongid.test, split.test, login.test, mapped.test]\n  deny:\n    domains: [denied.test]\n",
        env.rel("sel"),
        env.rel("sel2"),
    )
}

/// A started environment with the resolver and the policy in force.
fn started(extra: &[&str]) -> (TestEnv, integration_tests::DnsServer) {
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("sel2")).unwrap();
    let dns = env.dns_server(&zone());
    env.write_policy("names.yaml", &policy(&env));
    let mut args = vec!["--dns-resolver", "198.51.100.2/32"];
    args.extend_from_slice(extra);
    env.start_daemon(&args);
    env.wait_log("policy set generation", Duration::from_secs(10));
    (env, dns)
}

fn resolve_connect(
    env: &TestEnv,
    sub: &str,
    server: &str,
    name: &str,
    rounds: u32,
    extra: &[&str],
) -> Value {
    let port = PORT.to_string();
    let rounds = rounds.to_string();
    let mut args = vec![
        "resolve-connect",
        "--server",
        server,
        "--name",
        name,
        "--connect-port",
        &port,
        "--rounds",
        &rounds,
    ];
    args.extend_from_slice(extra);
    env.dnsprobe(sub, &args)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The daemon's DNS counters from its metrics endpoint.
fn dns_counter(metrics: &str, what: &str) -> u64 {
    let needle = format!("egress_monitor_dns_total{{what=\"{what}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    assert!(out.status.success(), "metrics scrape failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 500 resolve-then-connect rounds, each connecting the moment the answer
/// is read: the kernel has the name before the connect is judged, so not
/// one is refused. Without a lookup the same address is refused.
#[test]
fn resolve_then_connect_is_judged_by_name_without_a_race() {
    let (mut env, dns) = started(&[]);
    let r = resolve_connect(&env, "sel", &dns.addr, "allowed.test", 500, &[]);
    assert_eq!(n(&r, "rounds"), 500, "{r}");
    assert_eq!(n(&r, "resolved"), 500, "every round got an answer: {r}");
    assert_eq!(n(&r, "eperm"), 0, "no false denial: {r}");
    assert_eq!(n(&r, "connected") + n(&r, "refused"), 500, "{r}");
    let e = env.expect_event("allowed by name", Duration::from_secs(10), |e| {
        s(e, "dst_ip") == US_V4 && s(e, "verdict") == "allowed"
    });
    assert_eq!(s(&e, "rule"), "domain");
    assert_eq!(s(&e, "dns_name"), "allowed.test");
    assert_eq!(s(&e, "country"), "US", "the place is still told: {e}");

    // The same address, hard-coded in another cgroup: no name, refused.
    let p = env.probe("sel2", &["tcp", US_V4, &PORT.to_string()]);
    assert!(!p.ok && p.errno == i64::from(libc::EPERM), "{:?}", p.raw);
    let e = env.expect_event("denied without a name", Duration::from_secs(10), |e| {
        s(e, "dst_ip") == US_V4 && s(e, "verdict") == "denied"
    });
    assert_eq!(s(&e, "dns_name"), "", "reached without a lookup: {e}");
    assert_eq!(s(&e, "rule"), "default");

    // Over TCP (port 53), too.
    let r = resolve_connect(&env, "sel", &dns.addr, "api.svc.test", 20, &["--tcp"]);
    assert_eq!(
        (n(&r, "resolved"), n(&r, "eperm")),
        (20, 0),
        "wildcard over TCP: {r}"
    );
}

/// A process refused an address it reached without a name, which then
/// resolves a name that allows it, is allowed at its next connect: the
/// kernel's caches of the cgroup (the decision, the per-CPU copy of the
/// cgroup's memo) all give way to the learned name. The process stays on
/// one CPU, so the copy it filed at the refusal is the one it meets after.
#[test]
fn a_name_learned_after_a_refusal_opens_the_next_connect() {
    let (env, dns) = started(&[]);
    let r = resolve_connect(
        &env,
        "sel",
        &dns.addr,
        "allowed.test",
        20,
        &["--connect-first", US_V4],
    );
    assert_eq!(s(&r, "first"), "eperm", "refused without a name: {r}");
    assert_eq!(n(&r, "resolved"), 20, "every round got an answer: {r}");
    assert_eq!(n(&r, "eperm"), 0, "allowed once named: {r}");
    assert_eq!(n(&r, "connected") + n(&r, "refused"), 20, "{r}");
}

/// A denied name closes an address its region allows; CNAME chains are
/// named with both ends; one cgroup's lookup does not open the address for
/// another cgroup.
#[test]
fn denied_names_cname_chains_and_cgroups_apart() {
    let (mut env, dns) = started(&[]);
    let r = resolve_connect(&env, "sel", &dns.addr, "denied.test", 3, &[]);
    assert_eq!(
        (n(&r, "resolved"), n(&r, "eperm")),
        (3, 3),
        "denied by name: {r}"
    );
    let e = env.expect_event("denied by name", Duration::from_secs(10), |e| {
        s(e, "dst_ip") == DENIED_DE && s(e, "verdict") == "denied"
    });
    assert_eq!(
        (s(&e, "rule"), s(&e, "dns_name")),
        ("domain", "denied.test")
    );
    // The same address reached without the name (another cgroup) is
    // allowed by region: the refusal was the name's.
    let p = env.probe("sel2", &["tcp", DENIED_DE, &PORT.to_string()]);
    assert!(p.errno != i64::from(libc::EPERM), "{:?}", p.raw);

    let r = resolve_connect(&env, "sel", &dns.addr, "alias.test", 3, &[]);
    assert_eq!((n(&r, "resolved"), n(&r, "eperm")), (3, 0), "alias: {r}");
    let e = env.expect_event(
        "allowed through a CNAME chain",
        Duration::from_secs(10),
        |e| s(e, "dns_name") == "alias.test",
    );
    assert_eq!(s(&e, "dns_cname"), "target.test", "{e}");

    // The CLI filters by name (and prints the table the README shows).
    let table = env.cli_ok(&["events", "--last", "20", "--name", "*.test"]);
    println!("{table}");
    assert!(
        table.contains("alias.test") && table.contains("denied.test"),
        "{table}"
    );
    // The queries to the resolver itself had no lookup before them.
    let unnamed = env.cli_ok(&["events", "--last", "20", "--name", "-", "-o", "json"]);
    assert!(unnamed.lines().count() > 0, "no unnamed events");
    for line in unnamed.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            s(&e, "dns_name"),
            "",
            "--name - shows events without a name: {e}"
        );
    }
    // Flows come from the store, which writes in batches: bounded wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let flows = loop {
        let flows = env.cli_ok(&["flows", "--group-by", "name,verdict"]);
        if flows.contains("alias.test") || std::time::Instant::now() > deadline {
            break flows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{flows}");
    assert!(
        flows.contains("alias.test") && flows.contains("denied.test"),
        "{flows}"
    );

    // sel resolves; sel2 connects to the address at once: refused.
    let q = env.dnsprobe(
        "sel",
        &["query", "--server", &dns.addr, "--name", "allowed.test"],
    );
    assert!(q.to_string().contains(US_V4), "{q}");
    let p = env.probe("sel2", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == i64::from(libc::EPERM),
        "another cgroup's lookup opened the address: {:?}",
        p.raw
    );
}

/// A resolver the operator did not name teaches nothing, even one the
/// policy allows to be reached (a DNS server of the workload's own on an
/// allowed address would otherwise vouch for any address).
#[test]
fn only_named_resolvers_teach_names() {
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("sel2")).unwrap();
    let dns = env.dns_server(&zone());
    env.write_policy("names.yaml", &policy(&env));
    env.start_daemon(&[
        "--dns-resolver",
        "203.0.113.53/32",
        "--metrics-addr",
        "127.0.0.1:19468",
    ]);
    env.wait_log("policy set generation", Duration::from_secs(10));
    let r = resolve_connect(&env, "sel", &dns.addr, "allowed.test", 3, &[]);
    assert_eq!(
        (n(&r, "resolved"), n(&r, "eperm")),
        (3, 3),
        "an unnamed resolver opened the address: {r}"
    );
    let m = scrape("127.0.0.1:19468");
    assert!(dns_counter(&m, "untrusted_resolver") >= 3, "{m}");
    assert_eq!(dns_counter(&m, "learned"), 0, "{m}");
}

/// After the TTL (1 s, no minimum) plus the grace (1 s) the address is
/// judged by region again.
#[test]
fn names_expire_after_ttl_and_grace() {
    let (env, dns) = started(&["--dns-min-ttl", "0", "--dns-grace", "1"]);
    let q = env.dnsprobe(
        "sel",
        &["query", "--server", &dns.addr, "--name", "brief.test"],
    );
    assert!(q.to_string().contains(US_V4), "{q}");
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(p.ok, "within the TTL: {:?}", p.raw);
    std::thread::sleep(Duration::from_millis(2500));
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == i64::from(libc::EPERM),
        "after TTL and grace the region decides: {:?}",
        p.raw
    );
}

/// Bad answers: a truncated UDP answer learns nothing (the TCP retry
/// does), an answer about another name, a cut one, one with a compression
/// loop, one with the wrong id and an unsolicited one map nothing; a TCP
/// answer split over segments is not read; a flood of answers leaves the
/// daemon serving and enforcing. What was ignored is counted.
#[test]
fn bad_answers_map_nothing_and_are_counted() {
    let metrics_addr = "127.0.0.1:19467";
    let (env, dns) = started(&["--metrics-addr", metrics_addr]);
    let refused = |env: &TestEnv| {
        let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
        p.errno == i64::from(libc::EPERM)
    };
    // TC=1 over UDP: nothing learned.
    let q = env.dnsprobe(
        "sel",
        &[
            "query",
            "--server",
            &dns.addr,
            "--name",
            "big.test",
            "--no-tcp-fallback",
        ],
    );
    assert_eq!(q["tc"], true, "{q}");
    assert!(refused(&env), "a truncated answer opened the address");
    // Over TCP the same name is answered whole and learned.
    let q = env.dnsprobe(
        "sel",
        &[
            "query", "--server", &dns.addr, "--name", "big.test", "--tcp",
        ],
    );
    assert!(q.to_string().contains(US_V4), "{q}");
    assert!(!refused(&env), "the TCP answer was not learned");

    // A fresh cgroup for each of the rest, so nothing learned above counts.
    for (i, name) in [
        "other.test",
        "cut.test",
        "loop.test",
        "wrongid.test",
        "unsol.test",
    ]
    .iter()
    .enumerate()
    {
        let sub = format!("sel2/bad{i}");
        std::fs::create_dir_all(env.cgroup(&sub)).unwrap();
        // Some of these never get an answer the client accepts: only what
        // the kernel made of them matters.
        let _ = env.dnsprobe_output(
            &sub,
            &[
                "query",
                "--server",
                &dns.addr,
                "--name",
                name,
                "--accept-any",
            ],
        );
        let p = env.probe(&sub, &["tcp", US_V4, &PORT.to_string()]);
        assert!(
            !p.ok && p.errno == i64::from(libc::EPERM),
            "{name}: a bad answer opened {US_V4}: {:?}",
            p.raw
        );
    }
    let sub = "sel2/split";
    std::fs::create_dir_all(env.cgroup(sub)).unwrap();
    let _ = env.dnsprobe_output(
        sub,
        &[
            "query",
            "--server",
            &dns.addr,
            "--name",
            "split.test",
            "--tcp",
        ],
    );
    let p = env.probe(sub, &["tcp", US_V4, &PORT.to_string()]);
    assert!(!p.ok, "a split TCP answer was read: {:?}", p.raw);

    // A flood of answers for names nobody allowed, from a cgroup of its
    // own: still serving, and the flood's names open nothing.
    let sub = "sel2/flood";
    std::fs::create_dir_all(env.cgroup(sub)).unwrap();
    let f = env.dnsprobe(sub, &["flood", "--server", &dns.addr, "--count", "3000"]);
    assert!(n(&f, "sent") >= 3000, "{f}");
    let _ = env.status();
    let p = env.probe(sub, &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == i64::from(libc::EPERM),
        "the flood opened the address: {:?}",
        p.raw
    );

    let m = scrape(metrics_addr);
    for what in ["wrong_name", "truncated", "unsolicited"] {
        assert!(dns_counter(&m, what) >= 1, "{what} not counted:\n{m}");
    }
    assert!(
        dns_counter(&m, "malformed") + dns_counter(&m, "oversized") >= 1,
        "the cut and looping answers are not counted:\n{m}"
    );
    // Every answer the flood got passed the kernel: read, or ignored for a
    // reason (random ids collide: a query noted over another with the same
    // port and id makes the first answer `wrong_name`, the second
    // `unsolicited`).
    let seen =
        dns_counter(&m, "answers") + dns_counter(&m, "wrong_name") + dns_counter(&m, "unsolicited");
    assert!(
        seen >= n(&f, "answers"),
        "the flood's {} answers are not all counted ({seen}):\n{m}",
        n(&f, "answers")
    );
}

/// A connection allowed by a name keeps that name when a policy change
/// makes the kernel judge it again after the name expired: the policy
/// switch does not cut it.
#[test]
fn established_connections_keep_their_name_across_a_policy_switch() {
    use std::io::BufRead;
    let (env, dns) = started(&["--dns-min-ttl", "0", "--dns-grace", "1"]);
    let q = env.dnsprobe(
        "sel",
        &["query", "--server", &dns.addr, "--name", "brief.test"],
    );
    assert!(q.to_string().contains(US_V4), "{q}");
    let mut child = env
        .probe_command("sel", &["stream", "tcp", US_V4, &PORT.to_string(), "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("\"connected\":true"), "{line}");
    // The name expires (TTL 1 s + grace 1 s), then the policy set changes.
    std::thread::sleep(Duration::from_millis(2500));
    env.write_policy(
        "names.yaml",
        &policy(&env).replace("mode: enforce", "mode: enforce  # switched"),
    );
    let data = |env: &TestEnv| {
        env.received()
            .iter()
            .filter(|v| v.get("data").is_some())
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !env.log().contains("policy set generation 2") {
        assert!(std::time::Instant::now() < deadline, "no switch happened");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Packets in flight at the switch settle, then data must keep arriving
    // at the test host: the kernel judged the socket again, with its name.
    std::thread::sleep(Duration::from_millis(300));
    let at_switch = data(&env);
    std::thread::sleep(Duration::from_millis(1200));
    let later = data(&env);
    let _ = out.lines().map_while(Result::ok).last();
    let _ = child.wait();
    assert!(
        later > at_switch,
        "the established connection was cut at the switch ({at_switch} -> {later} data lines)"
    );
    // A new connection to the address, without a fresh lookup, is refused.
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(!p.ok && p.errno == i64::from(libc::EPERM), "{:?}", p.raw);
}

/// A workload asks the trusted resolver about an allowed name and forges
/// the answer itself, naming a denied address, by each route it has: a
/// broadcast and a multicast answer from a raw socket (looped back with
/// the real interface as their device), and a user and network namespace
/// of its own where a TUN device answers unicast from the trusted
/// resolver's address. Each forged answer reaches the querying socket (the
/// attack is made), and the address stays refused in the workload's
/// namespace. In the private namespace the name counts (its connect is let
/// through, to an address only the TUN device hears); it is not carried
/// into the real one, neither as a name nor as a cached decision.
#[test]
fn forged_answers_open_nothing() {
    let metrics_addr = "127.0.0.1:19469";
    let (env, dns) = started(&["--metrics-addr", metrics_addr]);
    let link = format!("emh{}", env.id);
    let port = PORT.to_string();
    for (i, via) in ["broadcast", "multicast", "tun"].into_iter().enumerate() {
        let sub = format!("sel2/forge{i}");
        std::fs::create_dir_all(env.cgroup(&sub)).unwrap();
        let mut args = vec![
            "forge",
            "--server",
            &dns.addr,
            "--name",
            "login.test",
            "--answer",
            US_V4,
            "--via",
            via,
            "--dev",
            &link,
        ];
        if via == "tun" {
            args.extend(["--connect-port", &port]);
        }
        let f = env.dnsprobe(&sub, &args);
        assert_eq!(
            f["delivered"], true,
            "{via}: the forged answer never reached the querying socket, so nothing was tried: {f}"
        );
        if via == "tun" {
            assert_eq!(
                f["private_connect_errno"],
                libc::EINPROGRESS,
                "{via}: in its own namespace the name counts: {f}"
            );
        }
        let p = env.probe(&sub, &["tcp", US_V4, &port]);
        assert!(
            !p.ok && p.errno == i64::from(libc::EPERM),
            "{via}: a forged answer opened {US_V4}: {:?}",
            p.raw
        );
    }
    let m = scrape(metrics_addr);
    assert!(
        dns_counter(&m, "spoofed") >= 2,
        "the broadcast and multicast answers are not counted as forged:\n{m}"
    );
}

/// An AAAA record holding `::ffff:a.b.c.d` does not vouch for the IPv4
/// address a.b.c.d: only an A record does.
#[test]
fn an_ipv4_mapped_aaaa_record_vouches_for_nothing() {
    let metrics_addr = "127.0.0.1:19470";
    let (env, dns) = started(&["--metrics-addr", metrics_addr]);
    let q = env.dnsprobe(
        "sel2",
        &[
            "query",
            "--server",
            &dns.addr,
            "--name",
            "mapped.test",
            "--aaaa",
        ],
    );
    assert!(
        q.to_string().contains(&format!("::ffff:{US_V4}")),
        "the resolver did not answer the mapped address: {q}"
    );
    let p = env.probe("sel2", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == i64::from(libc::EPERM),
        "an AAAA record opened the IPv4 address {US_V4}: {:?}",
        p.raw
    );
    let m = scrape(metrics_addr);
    assert!(dns_counter(&m, "mapped_v4") >= 1, "{m}");
}

/// With `--dns-trust-loopback`, a loopback resolver is trusted in the
/// daemon's own network namespace only: a workload's namespace has a
/// loopback of its own, where it can run a "resolver" at the trusted
/// address and answer itself. There the forged name opens nothing; in the
/// daemon's namespace the same stub teaches the name.
#[test]
fn loopback_resolvers_are_trusted_in_the_daemons_namespace_only() {
    let metrics_addr = "127.0.0.1:19471";
    let stub = "127.0.83.53:53";
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("sel2")).unwrap();
    // The stub's own address is allowed, as a node's stub must be.
    let with_stub = policy(&env).replace("  deny:\n", "    cidrs: [\"127.0.0.0/8\"]\n  deny:\n");
    assert_ne!(with_stub, policy(&env));
    env.write_policy("names.yaml", &with_stub);
    env.start_daemon(&[
        "--metrics-addr",
        metrics_addr,
        "--dns-trust-loopback",
        "--dns-resolver",
        "127.0.83.53/32",
    ]);
    env.wait_log("policy set generation", Duration::from_secs(10));
    let forge = [
        "forge",
        "--server",
        stub,
        "--name",
        "login.test",
        "--answer",
        US_V4,
        "--via",
        "stub",
    ];
    // In the workload's namespace (not the daemon's).
    let f = env.dnsprobe("sel2", &forge);
    assert_eq!(f["delivered"], true, "{f}");
    let p = env.probe("sel2", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == i64::from(libc::EPERM),
        "a loopback stub in the workload's namespace opened {US_V4}: {:?}",
        p.raw
    );
    let m = scrape(metrics_addr);
    assert_eq!(dns_counter(&m, "learned"), 0, "{m}");
    assert!(dns_counter(&m, "untrusted_resolver") >= 1, "{m}");

    // In the daemon's namespace, a selected workload's stub teaches. (No
    // connect here: the daemon's namespace routes to the real network.)
    let procs = env.cgroup("sel").join("cgroup.procs");
    let mut cmd = std::process::Command::new(integration_tests::dnsprobe_bin());
    cmd.args(forge);
    // SAFETY: only a write to cgroup.procs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            std::fs::write(&procs, b"0")
        });
    }
    let out = cmd.output().expect("run dnsprobe");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m = scrape(metrics_addr);
    assert!(
        dns_counter(&m, "learned") >= 1,
        "the daemon's own loopback stub taught nothing:\n{m}"
    );
}

/// `policy explain` against the daemon: exit status and everything said.
fn explain(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["policy", "explain"];
    all.extend_from_slice(args);
    let out = env.cli(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `policy explain` answers for the daemon in force: the name the cgroup
/// resolved the address from (learned in the kernel, no `--name`), the
/// policy version in force when the file on disk was since broken (which
/// the offline answer cannot know), the selected ancestor of a cgroup not
/// made yet, and clear INVALID_ARGUMENT errors.
#[test]
fn policy_explain_answers_for_the_daemon_in_force() {
    let (mut env, dns) = started(&[]);
    let r = resolve_connect(&env, "sel", &dns.addr, "allowed.test", 1, &[]);
    assert_eq!(n(&r, "resolved"), 1, "{r}");
    env.expect_event("allowed by name", Duration::from_secs(10), |e| {
        s(e, "dst_ip") == US_V4 && s(e, "dns_name") == "allowed.test"
    });
    let sel = env.cgroup("sel").display().to_string();
    let (code, text) = explain(&env, &[US_V4, "--cgroup", &sel]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "{US_V4} from {} (the daemon's policy set generation 1)",
            env.rel("sel")
        )) && text.contains(
            "name       allowed.test (the name the cgroup resolved it from): allowed by its domain rules"
        ) && text.contains("decision   allowed, rule domain: the name matches allow domain allowed.test"),
        "{text}"
    );
    // The other selected cgroup resolved nothing: no name, refused, and
    // the answer says why the domain rules did not speak.
    let (code, text) = explain(&env, &[US_V4, "--cgroup", &env.rel("sel2")]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("decision   denied, rule default")
            && text.contains("warning: policy names has domain rules but no name is known"),
        "{text}"
    );
    // A name given is judged as the kernel would judge it.
    let (code, text) = explain(
        &env,
        &[
            DENIED_DE,
            "--cgroup",
            &env.rel("sel2"),
            "--name",
            "denied.test",
        ],
    );
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("the name matches deny domain denied.test"),
        "{text}"
    );
    // A cgroup not made yet under a selected one: its ancestor decides.
    let (code, text) = explain(
        &env,
        &[US_V4, "--cgroup", &env.rel("sel/not-yet"), "-o", "json"],
    );
    assert_eq!(code, Some(3), "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["selected"].as_str(), Some(env.rel("sel").as_str()), "{v}");
    assert_eq!(v["policy_generation"].as_u64(), Some(1), "{v}");

    // The file on disk broken: the daemon keeps the version in force and
    // answers from it; the files alone no longer judge the cgroup.
    env.write_policy(
        "names.yaml",
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nspec: [\n",
    );
    env.wait_log("policy file rejected:", Duration::from_secs(10));
    let (code, text) = explain(&env, &[US_V4, "--cgroup", &sel]);
    assert_eq!(code, Some(0), "from the version in force: {text}");
    let offline = std::process::Command::new(integration_tests::daemon_bin())
        .args([
            "policy",
            "explain",
            "--offline",
            US_V4,
            "--cgroup",
            &sel,
            "--policies",
        ])
        .arg(env.policy_dir())
        .arg("--geoip")
        .arg(env.geoip())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&offline.stdout).into_owned()
        + &String::from_utf8_lossy(&offline.stderr);
    assert!(
        text.contains("(left out, as the daemon would)") && text.contains("not judged"),
        "{text}"
    );

    // Bad input over the API: the argument named, nothing answered.
    for (args, said) in [
        (
            vec![US_V4, "--pod", "nginx-7d4b"],
            "is not a Kubernetes UID",
        ),
        (
            vec![US_V4, "--cgroup", "/a/../b"],
            "no '.' or '..' components",
        ),
    ] {
        let (code, text) = explain(&env, &args);
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("InvalidArgument") && text.contains(said),
            "{args:?}: {text}"
        );
    }
}
