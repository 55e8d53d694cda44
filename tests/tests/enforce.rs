//! Kernel enforcement end to end: real programs on a test cgroup, real
//! connections to test hosts in a network namespace, real events.
use std::time::Duration;

use integration_tests::*;
use serde_json::Value;

const EPERM: i64 = 1;
const WAIT: Duration = Duration::from_secs(5);

fn allow_de(extra: &str) -> String {
    format!("  allow:\n    countries: [DE]\n{extra}")
}

fn is(e: &Value, pid: u64, dst: &str) -> bool {
    e["tgid"].as_u64() == Some(pid) && s(e, "dst_ip") == dst
}

/// Enforce mode: the allowed country is reachable, the other is refused with
/// EPERM, over TCP and UDP, IPv4, IPv6 and IPv4-mapped IPv6; each decision
/// arrives as an event with the right fields.
#[test]
fn enforce_allows_one_country_and_refuses_another() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();

    // Allowed: DE over TCP v4, v6 and mapped; UDP v4 and v6.
    for (proto, addr) in [
        ("tcp", DE_V4),
        ("tcp", DE_V6),
        // The second DE host: a repeat of a destination is counted, not
        // reported again, and the mapped form is the same destination.
        ("tcp", "::ffff:198.51.100.3"),
        ("udp", DE_V4),
        ("udp", DE_V6),
    ] {
        let p = env.probe("sel", &[proto, addr, &port]);
        assert!(p.ok, "{proto} to {addr} should pass: {:?}", p.raw);
        let shown = addr.trim_start_matches("::ffff:");
        let e = env.expect_event(&format!("allowed {proto} {addr}"), WAIT, |e| {
            is(e, p.pid, shown)
        });
        assert_eq!(s(&e, "verdict"), "allowed");
        assert_eq!(s(&e, "rule"), "country");
        assert_eq!(s(&e, "country"), "DE");
        assert_eq!(s(&e, "continent"), "EU");
        assert_eq!(s(&e, "protocol"), proto);
    }

    // Denied: US over every route.
    for (proto, addr, hook, family) in [
        ("tcp", US_V4, "connect4", "ipv4"),
        ("tcp", US_V6, "connect6", "ipv6"),
        ("tcp", "::ffff:203.0.113.3", "connect6", "ipv6"),
        ("udp", US_V4, "sendmsg4", "ipv4"),
        ("udp", US_V6, "sendmsg6", "ipv6"),
        ("udp", "::ffff:203.0.113.3", "sendmsg4", "ipv4"),
    ] {
        let p = env.probe("sel", &[proto, addr, &port]);
        assert!(
            !p.ok && p.errno == EPERM,
            "{proto} to {addr} should fail with EPERM: {:?}",
            p.raw
        );
        let shown = addr.trim_start_matches("::ffff:");
        let e = env.expect_event(&format!("denied {proto} {addr}"), WAIT, |e| {
            is(e, p.pid, shown)
        });
        assert_eq!(s(&e, "verdict"), "denied", "{e}");
        assert_eq!(s(&e, "rule"), "default", "{e}");
        assert_eq!(s(&e, "policy"), "eu-only");
        assert_eq!(s(&e, "hook"), hook, "{e}");
        assert_eq!(s(&e, "family"), family, "{e}");
        assert_eq!(s(&e, "protocol"), proto);
        assert_eq!(s(&e, "country"), "US");
        assert_eq!(e["dst_port"].as_u64(), Some(u64::from(PORT)));
        assert_eq!(e["pid"].as_u64(), Some(p.pid));
        assert_eq!(e["uid"].as_u64(), Some(0));
        assert_eq!(s(&e, "comm"), "probe");
        assert_eq!(s(&e, "cgroup_path"), env.rel("sel"));
        assert_eq!(
            e["cgroup_id"].as_u64(),
            Some(monitor::cgroups::cgroup_id(&env.cgroup("sel")).unwrap())
        );
        let time = s(&e, "time");
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "RFC 3339 with nanoseconds: {time}"
        );
    }
}

/// Monitor mode: the same denied destination goes through, and the event
/// says it would have been denied.
#[test]
fn monitor_mode_lets_through_and_reports_would_deny() {
    let mut env = TestEnv::new();
    env.write_policy(
        "p.yaml",
        &env.policy("watch", "monitor", "sel", &allow_de("")),
    );
    env.start_daemon(&[]);
    for proto in ["tcp", "udp"] {
        let p = env.probe("sel", &[proto, US_V4, &PORT.to_string()]);
        assert!(p.ok, "monitor mode must not block {proto}: {:?}", p.raw);
        let e = env.expect_event("would_deny", WAIT, |e| is(e, p.pid, US_V4));
        assert_eq!(s(&e, "verdict"), "would_deny");
        assert_eq!(s(&e, "policy"), "watch");
    }
}

/// A process outside every selected subtree is neither judged nor reported.
#[test]
fn unselected_cgroup_is_untouched() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let p = env.probe("unsel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(p.ok, "unselected cgroup must reach US: {:?}", p.raw);
    // A selected probe after it proves the pipeline was flowing.
    let q = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(!q.ok);
    env.expect_event("selected probe", WAIT, |e| is(e, q.pid, US_V4));
    let about_unselected = env.events_within(Duration::from_millis(200), |e| {
        e["tgid"].as_u64() == Some(p.pid)
    });
    assert!(
        about_unselected.is_empty(),
        "events for an unselected process: {about_unselected:?}"
    );
}

/// Every program of a cgroup no policy selects exits at its first lookup
/// (QUIET: "not selected under the policy set in force"); a policy that
/// selects the cgroup later judges it from its very next attempt, and one
/// that lets it go leaves it untouched again: TCP and UDP, IPv4 and IPv6.
#[test]
fn an_unselected_cgroup_is_judged_from_the_switch_that_selects_it() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    let routes = [
        ("tcp", US_V4),
        ("udp", US_V4),
        ("tcp", US_V6),
        ("udp", US_V6),
    ];
    // Attempts enough to leave the cgroup quiet on the CPUs they ran on.
    for _ in 0..3 {
        for (proto, addr) in routes {
            let p = env.probe("unsel", &[proto, addr, &port]);
            assert!(p.ok, "unselected: {proto} to {addr}: {:?}", p.raw);
        }
    }
    env.write_policy(
        "later.yaml",
        &env.policy("later", "enforce", "unsel", &allow_de("")),
    );
    env.wait_status("policy generation 2", WAIT, |s| {
        s["policy_generation"].as_u64() == Some(2)
    });
    for (proto, addr) in routes {
        let p = env.probe("unsel", &[proto, addr, &port]);
        assert!(
            !p.ok && p.errno == EPERM,
            "selected since the switch: {proto} to {addr}: {:?}",
            p.raw
        );
        let e = env.expect_event(&format!("denied {proto} {addr}"), WAIT, |e| {
            is(e, p.pid, addr)
        });
        assert_eq!(
            (s(&e, "policy"), s(&e, "verdict")),
            ("later", "denied"),
            "{e}"
        );
    }
    std::fs::remove_file(env.policy_dir().join("later.yaml")).unwrap();
    env.wait_status("policy generation 3", WAIT, |s| {
        s["policy_generation"].as_u64() == Some(3)
    });
    for (proto, addr) in routes {
        let p = env.probe("unsel", &[proto, addr, &port]);
        assert!(p.ok, "unselected again: {proto} to {addr}: {:?}", p.raw);
    }
}

/// A child cgroup created after the daemon started is covered from its
/// first connection (the kernel walks to the nearest selected ancestor).
#[test]
fn child_cgroup_created_later_is_covered() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    std::fs::create_dir_all(env.cgroup("sel/pod/container")).unwrap();
    let p = env.probe("sel/pod/container", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == EPERM,
        "new child cgroup must be judged: {:?}",
        p.raw
    );
    let e = env.expect_event("child denied", WAIT, |e| is(e, p.pid, US_V4));
    assert_eq!(s(&e, "cgroup_path"), env.rel("sel/pod/container"));
    let q = env.probe("sel/pod/container", &["tcp", DE_V4, &PORT.to_string()]);
    assert!(q.ok, "{:?}", q.raw);
}

/// Nested selections: the nearest selected ancestor's policy decides.
#[test]
fn nearest_selected_ancestor_decides() {
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("sel/inner")).unwrap();
    env.write_policy(
        "outer.yaml",
        &env.policy("outer", "enforce", "sel", &allow_de("")),
    );
    env.write_policy(
        "inner.yaml",
        &env.policy(
            "inner",
            "enforce",
            "sel/inner",
            "  allow:\n    countries: [US]\n",
        ),
    );
    env.start_daemon(&[]);
    let port = PORT.to_string();
    let p = env.probe("sel/inner", &["tcp", US_V4, &port]);
    assert!(p.ok, "inner policy allows US: {:?}", p.raw);
    let e = env.expect_event("inner allowed", WAIT, |e| is(e, p.pid, US_V4));
    assert_eq!(s(&e, "policy"), "inner");
    let q = env.probe("sel/inner", &["tcp", DE_V4, &port]);
    assert!(
        !q.ok && q.errno == EPERM,
        "inner policy does not allow DE: {:?}",
        q.raw
    );
    let r = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(r.ok, "outer still allows DE: {:?}", r.raw);
}

/// Deny beats allow: a deny CIDR inside an allowed country wins, with rule
/// `cidr`; an allow CIDR opens an address the region rules would refuse.
#[test]
fn deny_cidr_beats_allowed_country_and_allow_cidr_opens() {
    let mut env = TestEnv::new();
    let body = allow_de(&format!(
        "    cidrs: [\"{US_V4}/32\"]\n  deny:\n    cidrs: [\"{DE_V4}/32\"]\n"
    ));
    env.write_policy("p.yaml", &env.policy("cidrs", "enforce", "sel", &body));
    env.start_daemon(&[]);
    let port = PORT.to_string();
    let p = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(!p.ok && p.errno == EPERM, "{:?}", p.raw);
    let e = env.expect_event("cidr deny", WAIT, |e| is(e, p.pid, DE_V4));
    assert_eq!((s(&e, "verdict"), s(&e, "rule")), ("denied", "cidr"));
    let q = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(q.ok, "{:?}", q.raw);
    let e = env.expect_event("cidr allow", WAIT, |e| is(e, q.pid, US_V4));
    assert_eq!((s(&e, "verdict"), s(&e, "rule")), ("allowed", "cidr"));
    // DE over IPv6 is still allowed by country.
    assert!(env.probe("sel", &["tcp", DE_V6, &port]).ok);
}

/// Connected UDP: a sendmsg without a destination but with ancillary data
/// reaches the sendmsg hook with no address; it is not a false deny.
#[test]
fn connected_udp_with_ancillary_data_is_not_denied() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    for addr in [DE_V4, DE_V6] {
        let p = env.probe("sel", &["udp-pktinfo", addr, &PORT.to_string()]);
        assert!(p.ok, "connected UDP with PKTINFO to {addr}: {:?}", p.raw);
    }
    // And connecting a UDP socket to a denied host is refused at connect.
    let p = env.probe("sel", &["udp-pktinfo", US_V4, &PORT.to_string()]);
    assert!(!p.ok && p.errno == EPERM, "{:?}", p.raw);
    let e = env.expect_event("udp connect denied", WAIT, |e| is(e, p.pid, US_V4));
    assert_eq!((s(&e, "hook"), s(&e, "protocol")), ("connect4", "udp"));
}

/// A changed policy file flips the verdict while the daemon runs; a broken
/// one is rejected with file:line and the policy in force stays in force.
#[test]
fn policy_changes_apply_atomically_and_broken_files_are_rejected() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    assert!(!env.probe("sel", &["tcp", US_V4, &port]).ok);

    env.set_policy("enforce", "DE, US");
    env.wait_status("policy generation 2", WAIT, |s| {
        s["policy_generation"].as_u64() == Some(2)
    });
    let p = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(p.ok, "US allowed after the change: {:?}", p.raw);
    let e = env.expect_event("allowed after change", WAIT, |e| is(e, p.pid, US_V4));
    assert_eq!(e["policy_generation"].as_u64(), Some(2));

    // Broken: an unknown country code on line 9.
    env.set_policy("enforce", "DE, XX");
    let policy_file = env.policy_dir().join("p.yaml");
    env.wait_log(
        &format!(
            "{}:9: \"XX\" is not an ISO 3166-1 alpha-2 country code",
            policy_file.display()
        ),
        WAIT,
    );
    let q = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(
        q.ok,
        "the previous version (allowing US) stays in force: {:?}",
        q.raw
    );

    // Broken YAML is rejected the same way.
    env.write_policy("p.yaml", "apiVersion: [\n");
    env.wait_log(&format!("{}:1", policy_file.display()), WAIT);
    assert!(env.probe("sel", &["tcp", US_V4, &port]).ok);

    // Removing the file removes the policy: the cgroup is no longer judged.
    std::fs::remove_file(&policy_file).unwrap();
    env.wait_log("0 policies, 0 selected cgroups", WAIT);
    assert!(env.probe("sel", &["tcp", US_V4, &port]).ok);
}

/// Two policies selecting the very same cgroup are settled for that cgroup
/// alone (enforce before monitor), reported in the log and in status, and
/// selection goes on for every other cgroup: a cgroup made after the
/// conflict, selected by a third policy, is judged and refuses.
#[test]
fn two_policies_on_one_cgroup_are_settled_for_it_alone() {
    let mut env = TestEnv::new();
    env.write_policy(
        "a.yaml",
        &env.policy("a", "monitor", "sel", "  allow:\n    countries: [US]\n"),
    );
    env.write_policy(
        "c.yaml",
        &env.policy("c", "enforce", "later", &allow_de("")),
    );
    env.start_daemon(&[]);
    env.write_policy("b.yaml", &env.policy("b", "enforce", "sel", &allow_de("")));
    env.wait_log(
        &format!(
            "selector conflict: cgroup {} is selected by policies b and a; b judges it",
            env.rel("sel")
        ),
        WAIT,
    );
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(
        !p.ok && p.errno == EPERM,
        "b (enforce) judges sel: {:?}",
        p.raw
    );
    let e = env.expect_event("judged by b", WAIT, |e| is(e, p.pid, US_V4));
    assert_eq!(s(&e, "policy"), "b");
    let st = env.status();
    let conflicts = st["selector_conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conflicts.len() == 1 && conflicts[0].as_str().unwrap().contains("b judges it"),
        "{st}"
    );
    // The conflict freezes nothing: a new cgroup, hammered from its
    // first moment, is judged and selected by c.
    std::fs::create_dir(env.cgroup("later")).unwrap();
    let hammer = env.hammer("later", 500);
    env.assert_nothing_through(hammer, "a new cgroup beside a conflict");
    env.wait_log(&format!("cgroup {} (id", env.rel("later")), WAIT);
    // A destination of its own: the hammer's are decided and counted.
    let fresh = env.fresh_port().to_string();
    let q = env.probe("later", &["tcp", US_V4, &fresh]);
    assert!(
        !q.ok && q.errno == EPERM,
        "c judges the new cgroup: {:?}",
        q.raw
    );
    let e = env.expect_event("judged by c", WAIT, |e| is(e, q.pid, US_V4));
    assert_eq!(s(&e, "policy"), "c");
    // Settled again when the conflict goes.
    std::fs::remove_file(env.policy_dir().join("b.yaml")).unwrap();
    env.wait_status("no conflict", WAIT, |s| {
        s["selector_conflicts"]
            .as_array()
            .is_none_or(|c| c.is_empty())
    });
}

fn loop_result(child: std::process::Child) -> Value {
    let out = child.wait_with_output().expect("traffic loop");
    serde_json::from_slice(&out.stdout).expect("loop result JSON")
}

/// Traffic runs across twelve policy switches between two sets that both
/// allow DE and refuse the US, but for different reasons (the country; a
/// CIDR): every US connect is refused, every DE connect goes through, and
/// every decision's rule is the rule of the set its generation names, so no
/// decision mixed the slot of one set with the generation of another.
#[test]
fn traffic_across_policy_switches_sees_whole_sets() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    let spawn = |dst: &str| {
        env.probe_command("sel", &["tcp-loop", dst, &port, "5000", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start traffic loop")
    };
    let (us, de) = (spawn(US_V4), spawn(DE_V4));
    let first = env.status()["policy_generation"].as_u64().unwrap();
    for i in 1..=12u64 {
        let body = if i.is_multiple_of(2) {
            allow_countries("DE")
        } else {
            "  allow:\n    cidrs: [198.51.100.0/24]\n".to_string()
        };
        env.write_policy("p.yaml", &env.policy("eu-only", "enforce", "sel", &body));
        env.wait_status("the next generation", WAIT, |s| {
            s["policy_generation"].as_u64() == Some(first + i)
        });
    }
    let (us, de) = (loop_result(us), loop_result(de));
    assert_eq!(us["connected"], 0, "a US connect went through: {us}");
    assert_eq!(us["other"], 0, "{us}");
    assert_eq!(de["eperm"], 0, "a DE connect was refused: {de}");
    assert_eq!(de["connected"], 5000, "{de}");
    // Every DE decision carries the rule of its generation's set.
    let de_pid = de["pid"].as_u64().unwrap();
    let events = env.events_within(Duration::from_secs(2), |e| {
        e["pid"].as_u64() == Some(de_pid) && s(e, "dst_ip") == DE_V4
    });
    // A decision is an event when it is new or differs from the cached one
    // (here the rule changes at every switch); the repeats are counted.
    assert!(
        !events.is_empty() && events.len() <= 13,
        "one event per generation the traffic saw, not one per connect: {}",
        events.len()
    );
    env.wait_flow_count("DE connects", 5000, WAIT, |f| {
        s(f, "dst_ip") == DE_V4 && s(f, "verdict") == "allowed"
    });
    let mut generations = std::collections::BTreeSet::new();
    for e in &events {
        let g = e["policy_generation"].as_u64().unwrap();
        let want = if (g - first).is_multiple_of(2) {
            "country"
        } else {
            "cidr"
        };
        assert_eq!(
            s(e, "rule"),
            want,
            "generation {g} decided by the other set: {e}"
        );
        assert_eq!(s(e, "verdict"), "allowed", "{e}");
        generations.insert(g);
    }
    assert!(
        generations.len() >= 3,
        "the traffic did not overlap the switches (generations {generations:?}): this run proves nothing"
    );
}

/// Destinations that never leave the link (link-local unicast, the local
/// multicast block, broadcast) are allowed under an enforcing policy that
/// allows only DE, as the `cidr` rule; wider multicast is judged; with
/// `judgeLinkLocal: true` they are judged too. Judged from a dead end: an
/// allowed connect fails after the hook (no route), a refused one with
/// EPERM.
#[test]
fn link_local_destinations_are_exempt_unless_judged() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let ns = DeadEnd::new(&format!("emll-{}", env.id));
    let link = [
        "169.254.169.254",
        "224.0.0.251",
        "255.255.255.255",
        "fe80::1",
        "ff02::fb",
    ];
    let wider = ["239.255.255.250", "ff0e::1"];
    let errnos = |env: &TestEnv, addrs: &[&str]| -> Vec<i64> {
        let mut args = vec!["connect-many", "443"];
        args.extend(addrs);
        let out = env.probe_in(&ns.0, "sel", &args);
        out["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["errno"].as_i64().unwrap())
            .collect()
    };
    let got = errnos(&env, &link);
    assert!(
        got.iter().all(|&e| e != EPERM && e != 0),
        "exempt, then no route: {link:?} {got:?}"
    );
    let got = errnos(&env, &wider);
    assert!(
        got.iter().all(|&e| e == EPERM),
        "wider scopes are judged: {wider:?} {got:?}"
    );
    let e = env.expect_event("the metadata address, allowed", WAIT, |e| {
        s(e, "dst_ip") == "169.254.169.254"
    });
    assert_eq!(
        (s(&e, "verdict"), s(&e, "rule")),
        ("allowed", "cidr"),
        "{e}"
    );
    let check = std::process::Command::new(daemon_bin())
        .args(["policy", "check"])
        .arg(env.policy_dir().join("p.yaml"))
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains("link-local     allowed: 169.254.0.0/16"),
        "{check}"
    );

    let generation = env.status()["policy_generation"].as_u64().unwrap();
    env.write_policy(
        "p.yaml",
        &env.policy(
            "eu-only",
            "enforce",
            "sel",
            "  judgeLinkLocal: true\n  allow:\n    countries: [DE]\n",
        ),
    );
    env.wait_status("the judging set", WAIT, |s| {
        s["policy_generation"].as_u64() > Some(generation)
    });
    let got = errnos(&env, &link);
    assert!(got.iter().all(|&e| e == EPERM), "judged: {link:?} {got:?}");
}
